"""Corruptions at severities 1-5: the seed's four CIFAR-10-C corruptions on 8x8 digits, and two on MNIST-1D.

Digits (images ``(N, 8, 8)`` with values in ``[0, 1]``: sklearn's 0..16 divided by 16). The definitions and the
severity constants are CIFAR-10-C's (Hendrycks & Dietterich, 2019, the ``scale='cifar'`` constants of their
``make_cifar_c.py``), which work on ``x / 255`` in ``[0, 1]``, so values carry over unchanged:

- ``gaussian_noise``: ``clip(x + N(0, c^2), 0, 1)``, ``c = 0.04, 0.06, 0.08, 0.09, 0.10``.
- ``shot_noise``: ``clip(Poisson(c x) / c, 0, 1)``, ``c = 500, 250, 100, 75, 50``.
- ``defocus_blur``: correlate with ``disk(radius, alias_blur)`` (mirror borders, as cv2's default reflect-101),
  ``(radius, alias_blur) = (0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)``; ``disk`` is the normalized
  indicator of ``X^2 + Y^2 <= radius^2`` on the integer grid, smoothed by a 3x3 Gaussian of std ``alias_blur``.
- ``contrast``: ``clip((x - m) c + m, 0, 1)`` with ``m`` the image's mean, ``c = 0.75, 0.5, 0.4, 0.3, 0.15``.

The adaptation to 8x8: none of the constants is rescaled. The noise constants are per pixel and in value units,
so they mean the same on any image size. The blur radii are in pixels; on CIFAR's 32x32 they are 1-5% of the
width, on 8x8 they are 4x that. Rescaling them by 8/32 would give radii 0.08-0.38 px (a one-pixel disk) and alias
blurs 0.025-0.15 px (off-centre weight at most exp(-1/(2 * 0.15^2)) = 2e-10), which leave an 8x8 image unchanged
at every severity; so the pixel constants are kept, and the blur is stronger relative to the digit than on
CIFAR. (The digits themselves are 32x32 bitmaps summed over 4x4 blocks: one digit pixel is four bitmap pixels.)

MNIST-1D (signals ``(N, 40)``, normalized by the clean set's mean and std, as the generator does):

- ``gaussian``: ``x + N(0, c^2)`` with ``c = 0.1, 0.2, 0.3, 0.4, 0.5`` (in units of the data's std).
- ``corr_noise``: the generator's own knob, ``corr_noise_scale`` (default 0.25), raised to ``0.5, 0.75, 1.0, 1.5,
  2.0`` and the same signals generated again (same generator seed, so the same digits, pads, shifts and shears;
  see ``data.mnist1d_raw``). The knob sets the Gaussian-smoothed noise in the padding around the digit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

Array = NDArray[np.float64]

SEVERITIES = (1, 2, 3, 4, 5)
IMAGE_CORRUPTIONS = ("gaussian_noise", "shot_noise", "defocus_blur", "contrast")
SEQ_CORRUPTIONS = ("gaussian", "corr_noise")

GAUSSIAN_C = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_C = (500.0, 250.0, 100.0, 75.0, 50.0)
DEFOCUS_C = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))
CONTRAST_C = (0.75, 0.5, 0.4, 0.3, 0.15)
SEQ_GAUSSIAN_C = (0.1, 0.2, 0.3, 0.4, 0.5)
CORR_NOISE_SCALE = (0.5, 0.75, 1.0, 1.5, 2.0)


def _check(x: Array, severity: int) -> None:
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if x.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), got {x.shape}")


def gaussian_noise(x: Array, severity: int, rng: np.random.Generator) -> Array:
    _check(x, severity)
    out: Array = np.clip(x + rng.normal(scale=GAUSSIAN_C[severity - 1], size=x.shape), 0.0, 1.0)
    return out


def shot_noise(x: Array, severity: int, rng: np.random.Generator) -> Array:
    _check(x, severity)
    c = SHOT_C[severity - 1]
    out: Array = np.clip(rng.poisson(x * c) / c, 0.0, 1.0)
    return out


def disk_kernel(radius: float, alias_blur: float) -> Array:
    """CIFAR-10-C's ``disk`` on the grid -8..8, cropped to its 5x5 support (a disk of radius <= 1.5 covers
    at most the central 3x3, and the 3x3 smoothing adds one pixel on each side)."""
    grid = np.arange(-8, 9, dtype=np.float64)
    xx, yy = np.meshgrid(grid, grid)
    d = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    d /= d.sum()
    g = np.exp(-np.arange(-1.0, 2.0) ** 2 / (2.0 * alias_blur**2))
    g /= g.sum()  # cv2.GaussianBlur's 3-tap kernel for a given sigma
    smooth = ndimage.correlate1d(ndimage.correlate1d(d, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")
    out: Array = smooth[6:11, 6:11]
    return out


def defocus_blur(x: Array, severity: int, rng: np.random.Generator) -> Array:
    _check(x, severity)
    k = disk_kernel(*DEFOCUS_C[severity - 1])
    out = np.stack([ndimage.correlate(img, k, mode="mirror") for img in x])
    res: Array = np.clip(out, 0.0, 1.0)
    return res


def contrast(x: Array, severity: int, rng: np.random.Generator) -> Array:
    _check(x, severity)
    c = CONTRAST_C[severity - 1]
    m = x.mean(axis=(1, 2), keepdims=True)
    out: Array = np.clip((x - m) * c + m, 0.0, 1.0)
    return out


IMAGE_FUNCS: dict[str, Callable[[Array, int, np.random.Generator], Array]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "defocus_blur": defocus_blur,
    "contrast": contrast,
}


def corrupt_images(x: Array, name: str, severity: int, rng: np.random.Generator) -> Array:
    """Apply the image corruption ``name`` at ``severity`` (1-5) to ``(N, 8, 8)`` images in ``[0, 1]``."""
    if name not in IMAGE_FUNCS:
        raise ValueError(f"unknown image corruption {name!r}; expected one of {IMAGE_CORRUPTIONS}")
    return IMAGE_FUNCS[name](x, severity, rng)


def seq_gaussian(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Additive white noise on normalized MNIST-1D signals."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    out: Array = x + rng.normal(scale=SEQ_GAUSSIAN_C[severity - 1], size=x.shape)
    return out


def noise_level(clean: Array, corrupted: Array) -> float:
    """The measured strength of a corruption: the RMS change it makes, ``sqrt(mean((corrupted - clean)^2))``."""
    return float(np.sqrt(np.mean((corrupted - clean) ** 2)))
