"""Run the robustness and uncertainty study and write the raw per-seed results to a JSON file.

    python -m benchmarks.robustness.study --mode full|quick --out FILE.json [--workers N] [--seeds N]

What runs (every model with the same optimizer, learning rate, batch size and epochs; nothing is tuned):

- digits, EfficientCNN with each of ``models.NORMS_2D``:
  (a) the seed's protocol: train and test on each corruption at severity ``PROTOCOL_A_SEVERITY`` (3);
  (b) train clean, test on clean and on every corruption at severities 1-5; ``u`` of the Bayesian layers and
      the maximum softmax probability of every model on the same inputs.
- MNIST-1D, a 1-D CNN with each of ``models.NORMS_1D``: the same (a) and (b) with MNIST-1D's two corruptions.
- MNIST-1D, MLPs: deterministic and ``BayesianMLP`` (bbb, lr, clt) of the same size, trained clean with the ELBO
  ``mean NLL + KL / N`` (docs/bayesian-linear.md); accuracy, NLL, ECE and the AUROC of the predictive entropy for
  corrupted vs clean inputs.
- digits, a Bayesian CNN (``models.BayesianCNN``: LR or BBB convolutions and ``BayesianRLayerNorm2d``), trained
  clean with ``rln_verified.elbo``; accuracy, NLL, ECE and the AUROC of the predictive variance for corrupted vs
  clean inputs (``benchmarks/robustness/bayesian_cnn.py``).

The seed of a run sets the split, the initialization, the data order and the corruption noise; the corrupted
test sets of a seed are the same for every model, so comparisons are paired on seed and split. Jobs run in
``--workers`` processes with one torch thread each; progress and elapsed time go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from benchmarks.robustness import corruptions as C
from benchmarks.robustness import data as D
from benchmarks.robustness.models import BAYES_CNN_KINDS, MLP_KINDS, NORMS_1D, NORMS_2D, CNN1d, EfficientCNN, make_mlp
from benchmarks.robustness.stats import auroc, ece, spearman
from rln_verified import BayesianMLP, BayesianRLayerNorm, BayesianRLayerNorm2d
from rln_verified.seed import SeedBayesianRLayerNorm2d

PROTOCOL_A_SEVERITY = 3
Array = NDArray[np.float64]


@dataclass(frozen=True)
class Config:
    mode: str
    seeds: int
    epochs: int
    lr: float
    digits_train: int
    digits_test: int
    digits_batch: int
    mnist1d_samples: int
    seq_batch: int
    mc_samples: int


# Batch sizes 64 and 200 (not 32 and 100) keep the full mode inside 30 minutes on the shared 2-core machine; the
# same for every model.
FULL = Config("full", seeds=10, epochs=10, lr=3e-3, digits_train=1000, digits_test=500, digits_batch=64,
              mnist1d_samples=5000, seq_batch=200, mc_samples=16)
QUICK = Config("quick", seeds=2, epochs=1, lr=3e-3, digits_train=128, digits_test=64, digits_batch=64,
               mnist1d_samples=300, seq_batch=100, mc_samples=2)


# ---------------------------------------------------------------------------------------------------- helpers


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _t(x: Array) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: Config, batch: int, seed: int,
           loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
    """Adam(lr) for cfg.epochs over (x, y) in a seed-set order; cross-entropy unless ``loss_fn`` is given."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    n = len(y)
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            loss = loss_fn(model, x[idx], y[idx]) if loss_fn else F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    model.eval()


def _image_variants(split: D.Split, seed: int) -> dict[tuple[str, int], Array]:
    """The test images under every corruption and severity; noise drawn from (seed, corruption, severity)."""
    out: dict[tuple[str, int], Array] = {("clean", 0): split.x_test}
    for ci, name in enumerate(C.IMAGE_CORRUPTIONS):
        for s in C.SEVERITIES:
            out[(name, s)] = C.corrupt_images(split.x_test, name, s, _rng(seed, 1, ci, s))
    return out


def _seq_variants(split: D.Split, seed: int, cfg: Config) -> dict[tuple[str, int], Array]:
    out: dict[tuple[str, int], Array] = {("clean", 0): split.x_test}
    for s in C.SEVERITIES:
        out[("gaussian", s)] = C.seq_gaussian(split.x_test, s, _rng(seed, 2, 0, s))
        xc, _ = D.mnist1d_data(cfg.mnist1d_samples, C.CORR_NOISE_SCALE[s - 1])
        out[("corr_noise", s)] = xc[split.test_index]
    return out


def _uncertainty_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and, per Bayesian norm layer (ours: ``u``; the seed's: its ``1 / (sigma_eff^2 + eps)``), the
    per-sample mean over channels, in layer order."""
    per_layer: list[torch.Tensor] = []
    h = x.unsqueeze(1) if isinstance(model, CNN1d) else x
    assert isinstance(model, EfficientCNN | CNN1d)
    for layer in model.features:
        if isinstance(layer, BayesianRLayerNorm2d | BayesianRLayerNorm | SeedBayesianRLayerNorm2d):
            h, u = layer(h, return_uncertainty=True)
            per_layer.append(u.reshape(u.shape[0], -1).mean(dim=1))
        else:
            h = layer(h)
    logits: torch.Tensor = model.head(h.flatten(1))
    return logits, per_layer


def _eval_protocol_b(model: nn.Module, variants: dict[tuple[str, int], Array], y: NDArray[np.int64],
                     corrs: tuple[str, ...], has_u: bool) -> dict[str, Any]:
    """Accuracy per (corruption, severity); MSP AUROC vs clean; for Bayesian norms, u per layer: its mean per
    severity (0 = clean), AUROC vs clean (per layer and for the mean over layers), Spearman of the per-severity
    means with severity."""
    res: dict[str, Any] = {"acc": {}, "msp_auroc": {}}
    scores: dict[tuple[str, int], tuple[Array, list[Array]]] = {}
    with torch.no_grad():
        for key, xv in variants.items():
            logits, us = _uncertainty_forward(model, _t(xv))
            p = torch.softmax(logits.double(), dim=1).numpy()
            acc = float((p.argmax(1) == y).mean())
            scores[key] = (1.0 - p.max(1), [u.double().numpy() for u in us])
            if key[0] == "clean":
                res["acc"]["clean"] = acc
            else:
                res["acc"].setdefault(key[0], {})[str(key[1])] = acc
    clean_msp, clean_u = scores[("clean", 0)]
    for name in corrs:
        res["msp_auroc"][name] = {str(s): auroc(clean_msp, scores[(name, s)][0]) for s in C.SEVERITIES}
    if has_u:
        n_layers = len(clean_u)
        layers = [f"norm{i + 1}" for i in range(n_layers)] + ["all"]

        def pick(us: list[Array], j: int) -> Array:
            return np.mean(us, axis=0) if j == n_layers else us[j]

        mean_u: dict[str, Any] = {}
        au: dict[str, Any] = {}
        rho: dict[str, Any] = {}
        for name in corrs:
            keys = [("clean", 0)] + [(name, s) for s in C.SEVERITIES]
            mean_u[name] = {lay: [float(pick(scores[k][1], j).mean()) for k in keys] for j, lay in enumerate(layers)}
            au[name] = {lay: {str(s): auroc(pick(clean_u, j), pick(scores[(name, s)][1], j)) for s in C.SEVERITIES}
                        for j, lay in enumerate(layers)}
            rho[name] = {lay: spearman([0, *C.SEVERITIES], mean_u[name][lay]) for lay in layers}
        res["u"] = {"layers": layers, "mean_u": mean_u, "auroc": au, "spearman": rho}
    return res


# ---------------------------------------------------------------------------------------------------- jobs


def job_digits_b(cfg: Config, seed: int, norm: str) -> dict[str, Any]:
    split = D.digits_split(seed, cfg.digits_train, cfg.digits_test)
    torch.manual_seed(seed)
    model = EfficientCNN(norm)
    _train(model, _t(split.x_train).unsqueeze(1), torch.as_tensor(split.y_train), cfg, cfg.digits_batch, seed)
    variants = {k: v[:, None] for k, v in _image_variants(split, seed).items()}
    return _eval_protocol_b(model, variants, split.y_test, C.IMAGE_CORRUPTIONS, norm in ("brln", "seed_brln"))


def job_digits_a(cfg: Config, seed: int, norm: str) -> dict[str, Any]:
    split = D.digits_split(seed, cfg.digits_train, cfg.digits_test)
    s = PROTOCOL_A_SEVERITY
    out: dict[str, Any] = {}
    for ci, name in enumerate(C.IMAGE_CORRUPTIONS):
        xtr = C.corrupt_images(split.x_train, name, s, _rng(seed, 3, ci, s))
        xte = C.corrupt_images(split.x_test, name, s, _rng(seed, 4, ci, s))
        torch.manual_seed(seed)
        model = EfficientCNN(norm)
        _train(model, _t(xtr).unsqueeze(1), torch.as_tensor(split.y_train), cfg, cfg.digits_batch, seed)
        with torch.no_grad():
            pred = model(_t(xte).unsqueeze(1)).argmax(1).numpy()
        out[name] = float((pred == split.y_test).mean())
    return {"acc": out}


def job_seq_b(cfg: Config, seed: int, norm: str) -> dict[str, Any]:
    split = D.mnist1d_split(seed, cfg.mnist1d_samples)
    torch.manual_seed(seed)
    model = CNN1d(norm)
    _train(model, _t(split.x_train), torch.as_tensor(split.y_train), cfg, cfg.seq_batch, seed)
    return _eval_protocol_b(model, _seq_variants(split, seed, cfg), split.y_test, C.SEQ_CORRUPTIONS, norm == "brln")


def job_seq_a(cfg: Config, seed: int, norm: str) -> dict[str, Any]:
    split = D.mnist1d_split(seed, cfg.mnist1d_samples)
    s = PROTOCOL_A_SEVERITY
    x_corr, _ = D.mnist1d_data(cfg.mnist1d_samples, C.CORR_NOISE_SCALE[s - 1])
    perm = np.random.default_rng(seed).permutation(len(x_corr))  # mnist1d_split's permutation: its training rows
    train_index = perm[: len(split.y_train)]
    assert len(np.intersect1d(train_index, split.test_index)) == 0
    sets = {
        "gaussian": (C.seq_gaussian(split.x_train, s, _rng(seed, 5, 0, s)),
                     C.seq_gaussian(split.x_test, s, _rng(seed, 6, 0, s))),
        "corr_noise": (x_corr[train_index], x_corr[split.test_index]),
    }
    out: dict[str, Any] = {}
    for name in C.SEQ_CORRUPTIONS:
        xtr, xte = sets[name]
        torch.manual_seed(seed)
        model = CNN1d(norm)
        _train(model, _t(xtr), torch.as_tensor(split.y_train), cfg, cfg.seq_batch, seed)
        with torch.no_grad():
            pred = model(_t(xte)).argmax(1).numpy()
        out[name] = float((pred == split.y_test).mean())
    return {"acc": out}


def _mlp_logit_samples(model: nn.Module, kind: str, x: torch.Tensor, samples: int) -> torch.Tensor:
    """``(samples, N, classes)`` logits: one forward per sample (bbb, lr), or draws from the CLT's predictive
    Gaussian (clt), or the one deterministic output (det, samples = 1)."""
    if kind == "det":
        out: torch.Tensor = model(x)
        return out.unsqueeze(0)
    if kind == "clt":
        mean, var = model(x)
        std = var.clamp_min(0).sqrt()
        draws: torch.Tensor = mean + std * torch.randn((samples, *mean.shape))
        return draws
    return torch.stack([model(x) for _ in range(samples)])


def job_mlp(cfg: Config, seed: int, kind: str) -> dict[str, Any]:
    split = D.mnist1d_split(seed, cfg.mnist1d_samples)
    torch.manual_seed(seed)
    model = make_mlp(kind)
    n_data = len(split.y_train)

    def elbo_loss(m: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        logits = _mlp_logit_samples(m, kind, xb, 1)[0]
        nll = F.cross_entropy(logits, yb)
        if kind == "det":
            return nll
        kl, _ = m.get_kl()  # type: ignore[operator]
        total: torch.Tensor = nll + kl / n_data
        return total  # the minibatch ELBO's explicit 1/N (docs/bayesian-linear.md)

    _train(model, _t(split.x_train), torch.as_tensor(split.y_train), cfg, cfg.seq_batch, seed, elbo_loss)
    y = split.y_test

    def metrics(xv: Array, key: int) -> tuple[dict[str, float], Array]:
        torch.manual_seed(seed * 1000 + key)
        with torch.no_grad():
            p = torch.softmax(_mlp_logit_samples(model, kind, _t(xv), cfg.mc_samples).double(), -1).mean(0).numpy()
        ent = -(p * np.log(np.clip(p, 1e-300, None))).sum(1)
        nll = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None)).mean())
        return {"acc": float((p.argmax(1) == y).mean()), "nll": nll, "ece": ece(p, y)}, ent

    variants = _seq_variants(split, seed, cfg)
    clean, ent0 = metrics(variants[("clean", 0)], 0)
    res: dict[str, Any] = {"clean": clean, "corrupted": {}}
    if isinstance(model, BayesianMLP):  # how far training moved the posterior std from its initial 0.01
        with torch.no_grad():
            std = torch.cat([t.flatten() for layer in model.bayesian_layers() for t in layer.std() if t is not None])
        res["posterior_std"] = {"mean": float(std.mean()), "min": float(std.min()), "max": float(std.max())}
    for ci, name in enumerate(C.SEQ_CORRUPTIONS):
        res["corrupted"][name] = {}
        for s in C.SEVERITIES:
            m, ent = metrics(variants[(name, s)], 10 * (ci + 1) + s)
            m["auroc"] = auroc(ent0, ent)
            res["corrupted"][name][str(s)] = m
    return res


def job_bayes_cnn(cfg: Config, seed: int, kind: str) -> dict[str, Any]:
    """``bayesian_cnn.job_bayes_cnn``, imported when called (that module imports this one)."""
    from benchmarks.robustness.bayesian_cnn import job_bayes_cnn as job

    return job(cfg, seed, kind)


JOBS: dict[str, tuple[Callable[[Config, int, str], dict[str, Any]], tuple[str, ...]]] = {
    "digits_a": (job_digits_a, tuple(NORMS_2D)),
    "digits_b": (job_digits_b, tuple(NORMS_2D)),
    "mnist1d_a": (job_seq_a, tuple(NORMS_1D)),
    "mnist1d_b": (job_seq_b, tuple(NORMS_1D)),
    "mlp": (job_mlp, MLP_KINDS),
    "bayes_cnn": (job_bayes_cnn, BAYES_CNN_KINDS),
}
# Relative cost, to start the longest jobs first (measured: the seed forms train 2-3x slower).
_COST = {"digits_a": 4.0, "digits_b": 1.2, "mnist1d_a": 2.0, "mnist1d_b": 1.2, "mlp": 1.5, "bayes_cnn": 1.5}


def _run_one(task: str, cfg: Config, seed: int, name: str) -> tuple[str, int, str, dict[str, Any], float]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = JOBS[task][0](cfg, seed, name)
    return task, seed, name, res, time.perf_counter() - t0


def _fmt(sec: float) -> str:
    return f"{int(sec // 60)}m{int(sec % 60):02d}s"


def run(cfg: Config, workers: int, progress: bool = True) -> dict[str, Any]:
    jobs = [(task, seed, name) for task, (_, names) in JOBS.items() for seed in range(cfg.seeds) for name in names]
    jobs.sort(key=lambda j: -_COST[j[0]] * (2.5 if j[2].startswith("seed_") else 1.0))
    raw: dict[str, dict[str, list[Any]]] = {task: {name: [None] * cfg.seeds for name in names}
                                            for task, (_, names) in JOBS.items()}
    load_start = list(os.getloadavg())
    start = time.perf_counter()
    job_seconds = 0.0
    done = 0

    def record(out: tuple[str, int, str, dict[str, Any], float]) -> None:
        nonlocal done, job_seconds
        task, seed, name, res, sec = out
        raw[task][name][seed] = res
        done += 1
        job_seconds += sec
        tty = sys.stderr.isatty()
        if progress and (tty or done % max(1, len(jobs) // 20) == 0 or done == len(jobs)):
            el = time.perf_counter() - start
            eta = el / done * (len(jobs) - done)
            bar = "#" * int(30 * done / len(jobs))
            lead, end = ("\r", "") if tty else ("", "\n")
            print(f"{lead}[robustness {cfg.mode}] [{bar:<30}] {done}/{len(jobs)} elapsed {_fmt(el)} eta {_fmt(eta)} "
                  f"({task} {name} seed {seed}: {sec:.1f}s)   ", end=end, file=sys.stderr, flush=True)

    if workers <= 1:
        torch.set_num_threads(1)
        for j in jobs:
            record(_run_one(j[0], cfg, j[1], j[2]))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, j[0], cfg, j[1], j[2]) for j in jobs]
            for fut in as_completed(futures):
                record(fut.result())
    elapsed = time.perf_counter() - start
    if progress:
        print(f"\n[robustness {cfg.mode}] done: {len(jobs)} jobs in {_fmt(elapsed)} wall "
              f"({_fmt(job_seconds)} of job time over {workers} worker(s))", file=sys.stderr)
    return {
        "meta": {
            "config": asdict(cfg),
            "protocol_a_severity": PROTOCOL_A_SEVERITY,
            "workers": workers,
            "elapsed_s": elapsed,
            "job_seconds": job_seconds,
            "loadavg_start": load_start,
            "loadavg_end": list(os.getloadavg()),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "severities": list(C.SEVERITIES),
            "image_corruptions": list(C.IMAGE_CORRUPTIONS),
            "seq_corruptions": list(C.SEQ_CORRUPTIONS),
        },
        "raw": raw,
    }


def missing_cells(results: dict[str, Any]) -> list[str]:
    """Every (task, model, seed) cell and every corruption/severity inside it that is absent or not finite."""
    meta = results["meta"]
    seeds = meta["config"]["seeds"]
    sev = [str(s) for s in meta["severities"]]
    out: list[str] = []

    def finite(v: Any) -> bool:
        return isinstance(v, float) and math.isfinite(v)

    for task, (_, names) in JOBS.items():
        corrs = meta["image_corruptions"] if task.startswith("digits") else meta["seq_corruptions"]
        for name in names:
            cells = results["raw"].get(task, {}).get(name)
            if not isinstance(cells, list) or len(cells) != seeds:
                out.append(f"{task}/{name}: expected {seeds} seeds")
                continue
            for seed, cell in enumerate(cells):
                where = f"{task}/{name}/seed{seed}"
                if not isinstance(cell, dict):
                    out.append(where)
                    continue
                if task.endswith("_a"):
                    out += [f"{where}/{c}" for c in corrs if not finite(cell["acc"].get(c))]
                elif task == "bayes_cnn":
                    from benchmarks.robustness.bayesian_cnn import missing

                    out += [f"{where}/{m}" for m in missing(cell)]
                elif task == "mlp":
                    out += [f"{where}/clean/{k}" for k in ("acc", "nll", "ece") if not finite(cell["clean"].get(k))]
                    out += [f"{where}/{c}/{s}/{k}" for c in corrs for s in sev for k in ("acc", "nll", "ece", "auroc")
                            if not finite(cell["corrupted"].get(c, {}).get(s, {}).get(k))]
                else:
                    if not finite(cell["acc"].get("clean")):
                        out.append(f"{where}/clean")
                    out += [f"{where}/{c}/{s}" for c in corrs for s in sev
                            if not finite(cell["acc"].get(c, {}).get(s))]
                    out += [f"{where}/msp/{c}/{s}" for c in corrs for s in sev
                            if not finite(cell["msp_auroc"].get(c, {}).get(s))]
                    if name in ("brln", "seed_brln"):
                        u = cell.get("u", {})
                        out += [f"{where}/u/{c}/{lay}/{s}" for c in corrs for lay in u.get("layers", ["?"])
                                for s in sev if not finite(u.get("auroc", {}).get(c, {}).get(lay, {}).get(s))]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.robustness.study", description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("full", "quick"), default="full")
    ap.add_argument("--out", required=True, help="results JSON path")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: 2 in full mode, 1 in quick)")
    ap.add_argument("--seeds", type=int, default=None, help="override the number of seeds (full: 10)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    cfg = FULL if args.mode == "full" else QUICK
    if args.seeds is not None:
        if args.seeds < 2:
            raise SystemExit("--seeds must be >= 2 (a t interval needs two)")
        cfg = Config(**{**asdict(cfg), "seeds": args.seeds})
    workers = args.workers if args.workers is not None else (2 if cfg.mode == "full" else 1)
    results = run(cfg, workers, progress=not args.no_progress)
    missing = missing_cells(results)
    results["meta"]["missing_cells"] = missing
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    print(f"[robustness {cfg.mode}] wrote {args.out}; elapsed {results['meta']['elapsed_s']:.1f} s", file=sys.stderr)
    if missing:
        print(f"[robustness] {len(missing)} missing cells, e.g. {missing[:5]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
