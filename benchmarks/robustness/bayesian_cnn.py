"""A Bayesian CNN on the 8x8 digits: Bayesian convolutions and ``BayesianRLayerNorm2d``, trained with the ELBO.

    python -m benchmarks.robustness.bayesian_cnn --mode quick|full [--out FILE.json]

The model, per ``kind`` (``"lr"``: ``LRConv2d``/``LRLinear``; ``"bbb"``: ``BBBConv2d``/``BBBLinear``)::

    conv(1, 16, 3, padding=1) -> BayesianRLayerNorm2d(16) -> ReLU -> MaxPool2d(2)
    conv(16, 32, 3, padding=1) -> BayesianRLayerNorm2d(32) -> ReLU -> MaxPool2d(2) -> flatten -> linear(128, 10)

Training: the study's ``_train`` (Adam, its learning rate, epochs and digits batch size) on the loss
``rln_verified.elbo(model, mean cross-entropy, n_data=len(train))`` with ``kl_weight = 1`` (the exact ELBO, as the
study's Bayesian MLPs). Evaluation with ``rln_verified.predictive`` on the model followed by a softmax, ``cfg.
mc_samples`` passes: the predictive probabilities are the mean of the sampled softmax vectors; the uncertainty
score of an input is the **mean over the 10 classes of the sample variance of the softmax probabilities**
(``predictive``'s variance, unbiased over the passes). Reported per seed: accuracy, NLL and ECE (15 bins) on clean
and on every corruption and severity of the study (the study's corrupted test sets, the same noise per seed), and
the AUROC of the variance score for corrupted vs clean inputs; the AUROC of the predictive entropy of the same
probabilities is reported beside it as the usual baseline.

The full mode runs inside the study (``python -m benchmarks.robustness.study``, task ``bayes_cnn``); this module's
command runs only this experiment, with the study's seeds (full) or the small budget ``EXAMPLE_QUICK`` (quick),
which ``tests/test_bayesian_cnn_example.py`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from benchmarks.robustness import corruptions as C
from benchmarks.robustness import data as D
from benchmarks.robustness.models import BAYES_CNN_KINDS, BayesianCNN
from benchmarks.robustness.stats import auroc, ece, mean_ci
from benchmarks.robustness.study import FULL, QUICK, Config, _image_variants, _t, _train
from rln_verified import BayesianLayer, elbo, predictive

Array = NDArray[np.float64]

# The example's quick budget: 2 seeds, 5 epochs over 600 training digits, 8 passes of ``predictive``, all 500
# test digits (both kinds: 4 trainings). Measured on the shared 2-core machine, one torch thread: 14 s at load
# average about 1, 16 s at about 6; 62 s once at load about 7 with another full run beside it.
EXAMPLE_QUICK = replace(QUICK, seeds=2, epochs=5, digits_train=600, digits_test=500, mc_samples=8)


def _scores(model: nn.Module, x: torch.Tensor, y: NDArray[np.int64], samples: int
            ) -> tuple[dict[str, float], Array, Array]:
    """Accuracy, NLL, ECE of the predictive probabilities, and per input the variance score and the entropy."""
    with torch.no_grad():
        mean, var = predictive(nn.Sequential(model, nn.Softmax(dim=-1)), x, samples)
    p = mean.double().numpy()
    nll = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None)).mean())
    ent = -(p * np.log(np.clip(p, 1e-300, None))).sum(1)
    metrics = {"acc": float((p.argmax(1) == y).mean()), "nll": nll, "ece": ece(p, y)}
    return metrics, var.double().mean(dim=1).numpy(), ent


def job_bayes_cnn(cfg: Config, seed: int, kind: str) -> dict[str, Any]:
    """Train a ``BayesianCNN(kind)`` on the seed's split of the digits and evaluate it on every corruption."""
    split = D.digits_split(seed, cfg.digits_train, cfg.digits_test)
    torch.manual_seed(seed)
    model = BayesianCNN(kind)
    n_data = len(split.y_train)

    def loss(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return elbo(m, F.cross_entropy(m(xb), yb), n_data)

    _train(model, _t(split.x_train).unsqueeze(1), torch.as_tensor(split.y_train), cfg, cfg.digits_batch, seed, loss)
    y = split.y_test
    variants = _image_variants(split, seed)
    torch.manual_seed(seed * 1000)
    clean, var0, ent0 = _scores(model, _t(variants[("clean", 0)]).unsqueeze(1), y, cfg.mc_samples)
    clean["var"] = float(var0.mean())
    res: dict[str, Any] = {"clean": clean, "corrupted": {}}
    for ci, name in enumerate(C.IMAGE_CORRUPTIONS):
        res["corrupted"][name] = {}
        for s in C.SEVERITIES:
            torch.manual_seed(seed * 1000 + 10 * (ci + 1) + s)
            m, var, ent = _scores(model, _t(variants[(name, s)]).unsqueeze(1), y, cfg.mc_samples)
            m["var"] = float(var.mean())
            m["auroc_var"] = auroc(var0, var)
            m["auroc_entropy"] = auroc(ent0, ent)
            res["corrupted"][name][str(s)] = m
    with torch.no_grad():  # how far training moved the posterior std from its initial 0.01
        std = torch.cat([t.flatten() for layer in model.modules() if isinstance(layer, BayesianLayer)
                         for t in layer.std() if t is not None])
    res["posterior_std"] = {"mean": float(std.mean()), "min": float(std.min()), "max": float(std.max())}
    return res


METRICS = ("acc", "nll", "ece", "var", "auroc_var", "auroc_entropy")


def missing(cell: Any) -> list[str]:
    """The metrics absent or not finite in one seed's result (empty when complete)."""
    def finite(v: Any) -> bool:
        return isinstance(v, float) and np.isfinite(v)

    if not isinstance(cell, dict):
        return ["cell"]
    out = [f"clean/{k}" for k in METRICS[:4] if not finite(cell.get("clean", {}).get(k))]
    out += [f"{c}/{s}/{k}" for c in C.IMAGE_CORRUPTIONS for s in C.SEVERITIES for k in METRICS
            if not finite(cell.get("corrupted", {}).get(c, {}).get(str(s), {}).get(k))]
    return out


def summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """``(mean, 95% t half-width)`` over seeds of every metric: clean, and per corruption its mean over
    severities 1-5."""
    out: dict[str, Any] = {"clean": {k: mean_ci([c["clean"][k] for c in cells]) for k in ("acc", "nll", "ece", "var")}}
    for name in C.IMAGE_CORRUPTIONS:
        out[name] = {k: mean_ci([float(np.mean([c["corrupted"][name][str(s)][k] for s in C.SEVERITIES]))
                                 for c in cells]) for k in METRICS}
    return out


def run(cfg: Config, kinds: tuple[str, ...] = BAYES_CNN_KINDS) -> dict[str, Any]:
    torch.set_num_threads(1)
    start = time.perf_counter()
    raw = {kind: [job_bayes_cnn(cfg, seed, kind) for seed in range(cfg.seeds)] for kind in kinds}
    return {"meta": {"config": asdict(cfg), "elapsed_s": time.perf_counter() - start, "torch": torch.__version__,
                     "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "raw": raw}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.robustness.bayesian_cnn",
                                 description="The Bayesian CNN on the digits, alone.")
    ap.add_argument("--mode", choices=("full", "quick"), default="quick")
    kinds_all = ",".join(BAYES_CNN_KINDS)
    ap.add_argument("--kinds", default=kinds_all, help=f"comma-separated, from {kinds_all}")
    ap.add_argument("--out", default=None, help="results JSON path (default: print the summary only)")
    args = ap.parse_args(argv)
    kinds = tuple(args.kinds.split(","))
    if any(k not in BAYES_CNN_KINDS for k in kinds):
        raise SystemExit(f"--kinds must name some of {BAYES_CNN_KINDS}")
    res = run(FULL if args.mode == "full" else EXAMPLE_QUICK, kinds)
    for kind, cells in res["raw"].items():
        s = summary(cells)
        print(f"{kind}: clean acc {s['clean']['acc'][0]:.3f} nll {s['clean']['nll'][0]:.3f} "
              f"ece {s['clean']['ece'][0]:.3f} var {s['clean']['var'][0]:.2e}")
        for name in C.IMAGE_CORRUPTIONS:
            v = s[name]
            print(f"  {name:15s} acc {v['acc'][0]:.3f} ece {v['ece'][0]:.3f} var {v['var'][0]:.2e} "
                  f"auroc_var {v['auroc_var'][0]:.3f} auroc_entropy {v['auroc_entropy'][0]:.3f}")
    print(f"elapsed {res['meta']['elapsed_s']:.1f} s", file=sys.stderr)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
