"""The robustness study: seed fidelity of its models and corruptions, and its quick mode end to end.

- The seed's formulas (``rln_verified.seed``) and our layers agree where they should: at ``lambda =
  lambda_min`` both R-LayerNorms compute the same function, and our Bayesian layer at ``alpha = 0`` differs from
  the seed's Bayesian form only by the seed's ``exp(psi(lambda r))`` factor, which vanishes as ``lambda -> 0``.
- Each corruption raises a measured noise level strictly with severity.
- MNIST-1D as the study makes it is the generator's own data set.
- ``test_robustness_quick_end_to_end``: the study's quick mode runs and its JSON has every cell (``-k
  robustness_quick`` selects it).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rln_verified import BayesianRLayerNorm, BayesianRLayerNorm2d, RLayerNorm2d
from rln_verified.functional import psi
from rln_verified.seed import SeedBayesianRLayerNorm, SeedBayesianRLayerNorm2d, SeedRLayerNorm2d

# The study lives in the repository's benchmarks/ (not an installed package): import it from the checkout also when
# pytest is started as a script, which does not put the working directory on sys.path.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks.robustness import corruptions as C  # noqa: E402
from benchmarks.robustness import data as D  # noqa: E402
from benchmarks.robustness.models import BAYES_CNN_KINDS, MLP_KINDS, NORMS_1D, NORMS_2D, EfficientCNN  # noqa: E402

LAMBDA_MIN = 1e-3  # the seed's clamp floor, and our layers' default lambda_min
EPS64 = torch.finfo(torch.float64).eps


def _at_lambda_min(layer: RLayerNorm2d | BayesianRLayerNorm2d | BayesianRLayerNorm) -> None:
    """Put our layer's lambda at its lower bound: lambda = lo + (hi - lo)(1 + sin raw)/2 with raw = -pi/2
    (sin(-pi/2) rounds to -1 exactly in float64, so lambda = lo exactly)."""
    with torch.no_grad():
        layer.lambda_raw.fill_(-math.pi / 2)
    assert float(layer.lambda_.detach()) == LAMBDA_MIN


def _same_affine(ours: RLayerNorm2d | BayesianRLayerNorm2d | BayesianRLayerNorm,
                 seed: SeedRLayerNorm2d | SeedBayesianRLayerNorm2d | SeedBayesianRLayerNorm,
                 gen: torch.Generator) -> None:
    assert ours.weight is not None and ours.bias is not None
    with torch.no_grad():
        w = torch.randn(ours.weight.shape, generator=gen, dtype=torch.float64)
        b = torch.randn(ours.bias.shape, generator=gen, dtype=torch.float64)
        ours.weight.copy_(w)
        ours.bias.copy_(b)
        seed.weight.copy_(w.reshape(seed.weight.shape))
        seed.bias.copy_(b.reshape(seed.bias.shape))
        seed.lambda_raw.fill_(LAMBDA_MIN)  # the seed clamps to [1e-3, 1]: lambda = 1e-3


def _inputs(gen: torch.Generator) -> list[torch.Tensor]:
    """Conv-map-like inputs: white noise, a smooth map plus noise, and real digits through a random conv."""
    x1 = torch.randn(4, 16, 8, 8, generator=gen, dtype=torch.float64)
    grid = torch.linspace(-1, 1, 8, dtype=torch.float64)
    smooth = torch.sin(3 * grid)[None, None, :, None] * torch.cos(2 * grid)[None, None, None, :]
    x2 = smooth.expand(4, 16, 8, 8) + 0.1 * torch.randn(4, 16, 8, 8, generator=gen, dtype=torch.float64)
    digits = torch.as_tensor(D.digits_all()[0][:4], dtype=torch.float64).unsqueeze(1)
    conv = torch.nn.Conv2d(1, 16, 3, padding=1).double()
    with torch.no_grad():
        x3 = conv(digits)
    return [x1, x2, x3]


# Tolerance of "the same function" in float64. Both forms evaluate y = gamma (x - mu) / (sqrt(v + eps)(1 + lambda r))
# + beta with the same operations up to their order: per element a subtraction, a square root, two multiplications,
# a division and the affine (at most 8 roundings, each <= eps/2 relative), and the group statistics mu, v, nu, which
# are sums over n = 64 elements (pairwise summation: <= ceil(log2 64) = 6 roundings each, about 6 eps relative). The
# seed's local variance E[x^2] - E[x]^2 on uncentred data loses up to max(x^2)/nu eps relative in nu; it enters y only
# through lambda r with lambda = 1e-3, so it contributes at most 1e-3 * (max x^2 / nu) eps, under 1 eps on these
# inputs (max x^2 / nu < 1000 for them, which the test asserts). Summed over both forms: (8 + 3 * 6 + 1) * 2 = 54 eps
# relative to the scale of the terms, |gamma (x - mu)/sigma| + |beta|; the test uses 64 eps of that scale.
REL_TOL_EPS = 64


def test_seed_rln_matches_ours_at_lambda_min() -> None:
    gen = torch.Generator().manual_seed(0)
    for x in _inputs(gen):
        ours = RLayerNorm2d(16, dtype=torch.float64)
        seed = SeedRLayerNorm2d(16).double()
        _at_lambda_min(ours)
        _same_affine(ours, seed, gen)
        nu = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect") ** 2, 3, 1) - F.avg_pool2d(
            F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, 1) ** 2
        assert float((x**2).amax() / nu.mean(dim=(2, 3)).amin()) < 1000  # the premise of the tolerance
        with torch.no_grad():
            y_ours, y_seed = ours(x), seed(x)
            mu = x.mean(dim=(2, 3), keepdim=True)
            sd = (x.var(dim=(2, 3), unbiased=False, keepdim=True) + ours.eps).sqrt()
            scale = (ours.weight.view(1, -1, 1, 1) * (x - mu) / sd).abs() + ours.bias.view(1, -1, 1, 1).abs()
        assert torch.all((y_ours - y_seed).abs() <= REL_TOL_EPS * EPS64 * scale)


def test_seed_bayesian_matches_ours_at_lambda_min_and_alpha_zero() -> None:
    """Ours at alpha = 1 and the seed at lambda_min: the same function (tolerance above). Ours at alpha = 0 is
    plain per-channel normalization; the seed at lambda_min differs from it by sigma_eff / sigma = exp(psi(lambda
    r)), so |y_seed - y_ours| = |y_ours - beta| (1 - exp(-psi(lambda r))) <= |y_ours - beta| psi(lambda r), which
    -> 0 as lambda -> 0 (psi(t) ~ t^2 / 2): checked against psi(lambda r) computed from the input."""
    gen = torch.Generator().manual_seed(1)
    for x in _inputs(gen):
        seed = SeedBayesianRLayerNorm2d(16).double()
        ours1 = BayesianRLayerNorm2d(16, dtype=torch.float64)
        ours0 = BayesianRLayerNorm2d(16, dtype=torch.float64, alpha=0.0)
        for o in (ours1, ours0):
            _at_lambda_min(o)
        _same_affine(ours1, seed, gen)
        with torch.no_grad():
            ours0.weight.copy_(ours1.weight)
            ours0.bias.copy_(ours1.bias)
            y_seed = seed(x)
            y1, y0 = ours1(x), ours0(x)
            beta = ours1.bias.view(1, -1, 1, 1)
            mu = x.mean(dim=(2, 3), keepdim=True)
            v = x.var(dim=(2, 3), unbiased=False, keepdim=True)
            scale = (ours1.weight.view(1, -1, 1, 1) * (x - mu) / (v + ours1.eps).sqrt()).abs() + beta.abs()
            xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
            nu = (F.avg_pool2d(xp**2, 3, 1) - F.avg_pool2d(xp, 3, 1) ** 2).mean(dim=(2, 3), keepdim=True)
            p = psi(LAMBDA_MIN * nu / (v + ours1.eps))
        assert torch.all((y1 - y_seed).abs() <= REL_TOL_EPS * EPS64 * scale)
        # alpha = 0 is the plain normalization (N6) ...
        assert torch.allclose(y0, F.group_norm(x, 16, ours0.weight, ours0.bias, ours0.eps), rtol=0,
                              atol=REL_TOL_EPS * EPS64 * float(scale.max()))
        # ... and the seed at lambda_min is within the psi(lambda r) factor of it, and not equal to it.
        gap = (y_seed - y0).abs()
        assert torch.all(gap <= (y0 - beta).abs() * p + REL_TOL_EPS * EPS64 * scale)
        assert float(p.max()) < 1e-5 and float(gap.max()) > 0


def test_seed_bayesian_last_dims_matches_ours_at_lambda_min() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 4, 40, generator=gen, dtype=torch.float64)
    seed = SeedBayesianRLayerNorm((4, 40)).double()
    ours = BayesianRLayerNorm((4, 40), dtype=torch.float64)
    _at_lambda_min(ours)
    _same_affine(ours, seed, gen)
    with torch.no_grad():
        y_seed, y_ours = seed(x), ours(x)
        mu = x.mean(dim=(1, 2), keepdim=True)
        sd = (x.var(dim=(1, 2), unbiased=False, keepdim=True) + ours.eps).sqrt()
        scale = (ours.weight * (x - mu) / sd).abs() + ours.bias.abs()
    # Same derivation as REL_TOL_EPS, with n = 160 elements per group: (8 + 3 * 8 + 1) * 2 = 66 eps; allow 80.
    assert torch.all((y_ours - y_seed).abs() <= 80 * EPS64 * scale)


def test_efficient_cnn_has_the_seed_shape() -> None:
    for norm in NORMS_2D:
        m = EfficientCNN(norm)
        convs = [c for c in m.features if isinstance(c, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == [16, 32, 64]
        assert sum(isinstance(c, torch.nn.Tanh) for c in m.features) == 3
        assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name", C.IMAGE_CORRUPTIONS)
def test_image_corruption_noise_level_rises_with_severity(name: str) -> None:
    split = D.digits_split(0)
    x = split.x_test
    levels = [C.noise_level(x, C.corrupt_images(x, name, s, np.random.default_rng([7, s]))) for s in C.SEVERITIES]
    assert levels[0] > 0
    assert all(a < b for a, b in itertools.pairwise(levels)), levels
    out = C.corrupt_images(x, name, 5, np.random.default_rng(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise"])
def test_noise_corruptions_raise_the_noise_ratio(name: str) -> None:
    """For the two noise corruptions, the noise ratio R-LayerNorm itself uses, r = nu / (v + eps) (mean 3x3 local
    variance over the image's variance, N0), rises strictly with severity 1-5 and ends above the clean value.
    (nu alone does not: clipping to [0, 1] shrinks the digits' 0-to-1 edges more than the noise adds, measured.)"""
    x = D.digits_split(0).x_test

    def ratio(a: np.ndarray) -> float:
        t = torch.as_tensor(a).unsqueeze(1)
        tp = F.pad(t, (1, 1, 1, 1), mode="reflect")
        nu = (F.avg_pool2d(tp**2, 3, 1) - F.avg_pool2d(tp, 3, 1) ** 2).mean(dim=(2, 3))
        return float((nu / (t.var(dim=(2, 3), unbiased=False) + 1e-5)).mean())

    levels = [ratio(C.corrupt_images(x, name, s, np.random.default_rng([7, s]))) for s in C.SEVERITIES]
    assert all(a < b for a, b in itertools.pairwise(levels)), levels
    assert levels[-1] > ratio(x)


def test_seq_corruptions_raise_noise_level_with_severity() -> None:
    n = 500
    x, _ = D.mnist1d_data(n)
    gauss = [C.noise_level(x, C.seq_gaussian(x, s, np.random.default_rng([7, s]))) for s in C.SEVERITIES]
    corr = [C.noise_level(x, D.mnist1d_data(n, C.CORR_NOISE_SCALE[s - 1])[0]) for s in C.SEVERITIES]
    for levels in (gauss, corr):
        assert levels[0] > 0
        assert all(a < b for a, b in itertools.pairwise(levels)), levels


def test_defocus_kernel_is_cifar_c_disk() -> None:
    """A normalized kernel; radius < 1 is a one-pixel disk smoothed by the 3-tap Gaussian, so its centre weight
    is the square of the Gaussian's centre tap."""
    for radius, blur in C.DEFOCUS_C:
        k = C.disk_kernel(radius, blur)
        assert k.shape == (5, 5) and abs(k.sum() - 1) < 1e-12 and np.allclose(k, k.T)
    g = np.exp(-np.arange(-1.0, 2.0) ** 2 / (2 * 0.4**2))
    assert abs(C.disk_kernel(0.3, 0.4)[2, 2] - (g[1] / g.sum()) ** 2) < 1e-12


def test_mnist1d_is_the_generators_data_set() -> None:
    """Our loop over the generator's functions reproduces ``mnist1d.data.make_dataset`` exactly (no download)."""
    from mnist1d.data import get_dataset_args, make_dataset  # type: ignore[import-untyped]

    args = get_dataset_args()
    args.num_samples = 1000
    ref = make_dataset(args)
    x, y = D.mnist1d_data(1000)
    assert np.array_equal(np.concatenate([ref["x"], ref["x_test"]]), x)
    assert np.array_equal(np.concatenate([ref["y"], ref["y_test"]]), y)


def test_robustness_quick_end_to_end(tmp_path: Path) -> None:
    """The quick mode runs, its JSON has a finite number in every cell, and the report renders from it."""
    from benchmarks.robustness import report, study

    out = tmp_path / "quick.json"
    assert study.main(["--mode", "quick", "--out", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    seeds = res["meta"]["config"]["seeds"]
    assert seeds >= 2 and res["meta"]["missing_cells"] == []
    raw = res["raw"]
    assert set(raw) == {"digits_a", "digits_b", "mnist1d_a", "mnist1d_b", "mlp", "bayes_cnn"}
    assert set(raw["digits_a"]) == set(raw["digits_b"]) == set(NORMS_2D)
    assert set(raw["mnist1d_a"]) == set(raw["mnist1d_b"]) == set(NORMS_1D)
    assert set(raw["mlp"]) == set(MLP_KINDS)
    assert set(raw["bayes_cnn"]) == set(BAYES_CNN_KINDS)

    def numbers(obj: object) -> list[float]:
        if isinstance(obj, dict):
            return [v for o in obj.values() for v in numbers(o)]
        if isinstance(obj, list):
            return [v for o in obj for v in numbers(o)]
        return [obj] if isinstance(obj, float) else []

    n_sev = len(C.SEVERITIES)
    for task, corrs in (("digits", C.IMAGE_CORRUPTIONS), ("mnist1d", C.SEQ_CORRUPTIONS)):
        for name, cells in raw[f"{task}_b"].items():
            assert len(cells) == seeds
            for cell in cells:
                assert len(numbers(cell["acc"])) == 1 + len(corrs) * n_sev
                assert len(numbers(cell["msp_auroc"])) == len(corrs) * n_sev
                if name in ("brln", "seed_brln"):
                    n_layers = len(cell["u"]["layers"])  # the norm layers and their mean
                    assert n_layers == 4
                    assert len(numbers(cell["u"]["auroc"])) == len(corrs) * n_layers * n_sev
                    assert len(numbers(cell["u"]["mean_u"])) == len(corrs) * n_layers * (n_sev + 1)
        for cells in raw[f"{task}_a"].values():
            assert [len(numbers(c["acc"])) for c in cells] == [len(corrs)] * seeds
    for cells in raw["mlp"].values():
        for cell in cells:
            assert len(numbers(cell["clean"])) == 3
            assert len(numbers(cell["corrupted"])) == 4 * len(C.SEQ_CORRUPTIONS) * n_sev
    for cells in raw["bayes_cnn"].values():  # acc, nll, ece, var clean; and auroc_var, auroc_entropy corrupted
        assert [len(numbers(c["clean"])) for c in cells] == [4] * seeds
        assert [len(numbers(c["corrupted"])) for c in cells] == [6 * len(C.IMAGE_CORRUPTIONS) * n_sev] * seeds
    assert all(math.isfinite(v) for v in numbers(raw))
    md = tmp_path / "robustness.md"
    assert report.main([str(out), "--md", str(md)]) == 0
    text = md.read_text()
    verdicts = re.findall(r"^\| (?:Gaussian|Shot|Blur|Contrast) \|.*\*\*(reproduced|reversed|not reproduced "
                          r"\(no significant difference\))\*\* \|$", text, flags=re.M)
    assert "## Bayesian CNN on the digits" in text and "AUROC (variance)" in text
    assert "## The seed's table, settled" in text and len(verdicts) == 16  # 4 rows x 2 layers x 2 baselines
    assert all((tmp_path / f).stat().st_size > 1000 for f in
               ("robustness_digits.png", "robustness_mnist1d.png", "robustness_u.png"))
