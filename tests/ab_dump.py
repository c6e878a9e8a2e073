"""A/B check of a change that must not change results: the outputs and gradients of every public layer and functional
form on fixed inputs, through the public API only, so one script runs on both sides.

    git worktree add --detach /tmp/before REV
    PYTHONPATH=/tmp/before OMP_NUM_THREADS=1 .venv/bin/python tests/ab_dump.py /tmp/before.pt
    OMP_NUM_THREADS=1 .venv/bin/python tests/ab_dump.py /tmp/after.pt
    .venv/bin/python tests/ab_dump.py --compare /tmp/before.pt /tmp/after.pt

``--compare`` exits 1 unless both files hold the same tensors, bit for bit (NaN equal to NaN), with the same dtypes.
"""

from __future__ import annotations

import sys

import torch

if sys.argv[1:2] == ["--compare"]:
    a, b = torch.load(sys.argv[2]), torch.load(sys.argv[3])
    bad = sorted(set(a) ^ set(b)) + [k for k in a if k in b and not (
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k].nan_to_num(), b[k].nan_to_num())
        and torch.equal(a[k].isnan(), b[k].isnan()))]
    print(f"{len(a)} tensors, {len(bad)} differ" + (f": {bad[:10]}" if bad else ""))
    sys.exit(1 if bad else 0)

import rln_verified as R
from rln_verified import functional as F

out: dict[str, torch.Tensor] = {}


def put(key: str, *ts: object) -> None:
    for i, t in enumerate(ts):
        if isinstance(t, torch.Tensor):
            out[f"{key}/{i}"] = t.detach().clone()
        elif isinstance(t, (tuple, list)):
            put(f"{key}/{i}", *t)


def grads(key: str, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    gs = torch.autograd.grad(loss, [p for p in params if p.requires_grad], allow_unused=True)
    put(key + "/grad", *[g if g is not None else torch.zeros(()) for g in gs])


torch.manual_seed(0)
for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    for cls, shape, arg in ((R.RLayerNorm, (3, 5, 8), (5, 8)), (R.BayesianRLayerNorm, (4, 16), 16),
                            (R.RLayerNorm2d, (2, 3, 4, 5), 3), (R.BayesianRLayerNorm2d, (2, 3, 6, 6), 3)):
        torch.manual_seed(1)
        m = cls(arg, dtype=dt)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x = (torch.randn(shape) * 3 + 1).to(dt).requires_grad_(True)
        if "Bayesian" in cls.__name__:
            y, u = m(x, return_uncertainty=True)
            put(f"{cls.__name__}/{dt}", y, u)
            loss = (y.float() * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum() + u.float().sum()
        else:
            y = m(x)
            put(f"{cls.__name__}/{dt}", y)
            loss = (y.float() * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum()
        grads(f"{cls.__name__}/{dt}", loss, [x, *m.parameters()])

torch.manual_seed(2)
x = torch.randn(4, 6, 10, dtype=torch.float64)
put("F.r_layer_norm", F.r_layer_norm(x, (10,), lambda_=0.3))
put("F.bayesian_r_layer_norm", F.bayesian_r_layer_norm(x, (6, 10), lambda_=0.7, alpha=0.5))
x2 = torch.randn(2, 3, 5, 5)
put("F.r_layer_norm2d", F.r_layer_norm2d(x2, lambda_=0.3))
put("F.bayesian_r_layer_norm2d", F.bayesian_r_layer_norm2d(x2, lambda_=0.2))
put("F.noise_ratio", F.noise_ratio(x2), F.noise_ratio(x, two_d=False))

for dt in (torch.float32, torch.float64):
    mu = torch.linspace(-30, 30, 301, dtype=dt)
    sg = torch.logspace(-3, 2, 301, dtype=dt)
    mu.requires_grad_(True)
    sg.requires_grad_(True)
    for name in ("relu_moments", "neg_relu_moments", "crelu_moments"):
        r = getattr(F, name)(mu, sg)
        put(f"F.{name}/{dt}", r)
        grads(f"F.{name}/{dt}", sum(t.sum() for t in r), [mu, sg])
    for name in ("normal_pdf", "normal_cdf", "normal_logcdf"):
        put(f"F.{name}/{dt}", getattr(F, name)(mu, 0.5, 2.0))
    kl = F.kl_normal(mu, sg, mu * 0.5, sg * 2)
    put(f"F.kl_normal/{dt}", kl)
    grads(f"F.kl_normal/{dt}", kl.sum(), [mu, sg])
    t = torch.linspace(-50, 50, 1001, dtype=dt)
    put(f"F.special/{dt}", F.psi(t.abs()), F.softplus(t), F.inv_softplus(t.abs() + 1e-3))

for kind in ("bbb", "lr", "clt", "cltdet"):
    for dt, act, norm in ((torch.float32, "relu", False), (torch.float64, "crelu", True),
                          (torch.float32, "crelu", True)):
        torch.manual_seed(3)
        has_norm = norm and kind in ("bbb", "lr")  # CLT layers propagate moments and take no norm layer
        net = R.BayesianMLP(7, 5, depth=2, width=16, layer_type=kind, act=act, has_norm=has_norm).to(dt)
        x = torch.randn(9, 7, dtype=dt)
        y = net(x)
        put(f"MLP/{kind}/{dt}/{act}/{norm}", y)
        ys = y if isinstance(y, tuple) else (y,)
        kl = net.get_kl()[0] if kind != "cltdet" else 0  # the deterministic CLT layers have no KL
        loss = sum((t * t).sum() for t in ys if isinstance(t, torch.Tensor)) + kl
        grads(f"MLP/{kind}/{dt}/{act}/{norm}", loss, list(net.parameters()))

for cls in (R.BBBLinear, R.LRLinear, R.CLTLinear, R.CLTLinearDet):
    torch.manual_seed(4)
    layer = cls(6, 4, is_input=True) if cls in (R.CLTLinear, R.CLTLinearDet) else cls(6, 4)
    x = torch.randn(5, 6)
    r = layer(x)
    put(f"{cls.__name__}", r)
    if cls is not R.CLTLinearDet:
        put(f"{cls.__name__}/kl", layer.KL()[0], *layer.std(), *layer.var())

torch.save(out, sys.argv[1])
print(len(out), "tensors")
