"""The two data sets, made offline: scikit-learn's bundled digits and MNIST-1D from its generator functions.

Nothing here touches the network. ``sklearn.datasets.load_digits`` reads a file shipped inside scikit-learn.
MNIST-1D is generated with ``mnist1d.data.get_templates``, ``mnist1d.data.get_dataset_args`` and
``mnist1d.transform.transform``, in the loop of ``mnist1d.data.make_dataset`` (``mnist1d.data.get_dataset``,
which may download, is never called).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Labels = NDArray[np.int64]

MNIST1D_SEED = 42  # the generator's default seed: the published data set


@dataclass(frozen=True)
class Split:
    x_train: Array
    y_train: Labels
    x_test: Array
    y_test: Labels
    test_index: NDArray[np.int64]  # rows of the full data set that form the test set


@lru_cache(maxsize=1)
def digits_all() -> tuple[Array, Labels]:
    """All 1,797 digits as ``(N, 8, 8)`` in ``[0, 1]`` (sklearn's 0..16 divided by 16), with labels."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    d = load_digits()
    x = np.asarray(d.images, dtype=np.float64) / 16.0
    return x, np.asarray(d.target, dtype=np.int64)


def digits_split(seed: int, n_train: int = 1000, n_test: int = 500) -> Split:
    """A random split of the digits, chosen by ``seed``: ``n_train`` training and ``n_test`` test images."""
    x, y = digits_all()
    if n_train + n_test > len(y):
        raise ValueError(f"n_train + n_test must be <= {len(y)}, got {n_train} + {n_test}")
    perm = np.random.default_rng(seed).permutation(len(y))
    tr, te = perm[:n_train], perm[n_train : n_train + n_test]
    return Split(x[tr], y[tr], x[te], y[te], te)


@lru_cache(maxsize=8)
def mnist1d_raw(num_samples: int = 5000, corr_noise_scale: float | None = None) -> tuple[Array, Labels]:
    """MNIST-1D before normalization, in ``make_dataset``'s order, with ``corr_noise_scale`` set (None: the
    default 0.25). The generator seed is fixed (42), and the number of random draws per signal does not depend
    on the noise scale, so each scale gives the same digits with only the padding noise changed."""
    from mnist1d.data import get_dataset_args, get_templates  # type: ignore[import-untyped]
    from mnist1d.transform import transform  # type: ignore[import-untyped]

    args = get_dataset_args()
    args.num_samples = num_samples
    if corr_noise_scale is not None:
        args.corr_noise_scale = corr_noise_scale
    templates = get_templates()
    saved = np.random.get_state()  # noqa: NPY002 - the generator draws from numpy's global state
    try:
        np.random.seed(MNIST1D_SEED)  # noqa: NPY002
        xs, ys = [], []
        per_class = num_samples // len(templates["y"])
        for label in range(len(templates["y"])):
            for _ in range(per_class):
                xi, _t = transform(templates["x"][label], templates["t"], args)
                xs.append(xi)
                ys.append(templates["y"][label])
        order = np.random.permutation(len(ys))  # noqa: NPY002 (make_dataset's shuffle)
    finally:
        np.random.set_state(saved)  # noqa: NPY002
    x = np.stack(xs)[order].astype(np.float64)
    return x, np.asarray(ys, dtype=np.int64)[order]


def mnist1d_normalization(num_samples: int = 5000) -> tuple[float, float]:
    """The clean data set's mean and std, which the generator normalizes by; corrupted versions use the same."""
    x, _ = mnist1d_raw(num_samples)
    return float(x.mean()), float(x.std())


def mnist1d_data(num_samples: int = 5000, corr_noise_scale: float | None = None) -> tuple[Array, Labels]:
    """MNIST-1D normalized by the clean set's mean and std: ``(N, 40)`` signals and labels."""
    x, y = mnist1d_raw(num_samples, corr_noise_scale)
    m, s = mnist1d_normalization(num_samples)
    return (x - m) / s, y


def mnist1d_split(seed: int, num_samples: int = 5000, train_frac: float = 0.8) -> Split:
    """A random split of MNIST-1D chosen by ``seed`` (the generator's 80/20 proportion)."""
    x, y = mnist1d_data(num_samples)
    perm = np.random.default_rng(seed).permutation(len(y))
    k = int(len(y) * train_frac)
    tr, te = perm[:k], perm[k:]
    return Split(x[tr], y[tr], x[te], y[te], te)
