"""to_bayesian: a trained model's nn.Linear and nn.Conv2d become Bayesian layers that start at the trained weights.

MAP mode of the converted model must compute the original model bit for bit (C4: MAP mode is F.linear/F.conv2d
with the means), MOPED must set every std to delta * |w| within the rounding derived below, and every module must
be either converted or reported as left alone, never skipped silently.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rln_verified as rv
from rln_verified._bayesian_std import INIT_STD, std_bounds
from rln_verified._to_bayesian import ConversionReport, Converted, Kept, to_bayesian


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, padding_mode="reflect", bias=False)
        self.norm = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x)))


class _CNN(nn.Module):
    """Conv2d + BatchNorm + Linear, with the conv options the Bayesian convolutions must carry over."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding="same", dilation=2)
        self.bn = nn.BatchNorm2d(4)
        self.block = _Block()
        self.grouped = nn.Conv2d(8, 8, (2, 3), groups=4, padding=(1, 0))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        return self.head(self.pool(self.grouped(self.block(h))))


CONVERTED = ["stem", "block.conv", "grouped", "head.1", "head.3"]


def _trained(dtype: torch.dtype = torch.float32, seed: int = 0) -> _CNN:
    """A CNN with non-default weights and BatchNorm statistics, in eval mode (BatchNorm uses its running stats)."""
    torch.manual_seed(seed)
    model = _CNN().to(dtype)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _x(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(5, 3, 9, 9, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _map(model: nn.Module, on: bool = True) -> None:
    for m in model.modules():
        if isinstance(m, rv.BayesianLayer):
            m.map(on)


def _layers(model: nn.Module) -> dict[str, rv.BayesianLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, rv.BayesianLayer)}


@pytest.mark.parametrize("layer_type,conv_cls,lin_cls", [("bbb", rv.BBBConv2d, rv.BBBLinear),
                                                         ("lr", rv.LRConv2d, rv.LRLinear)])
def test_types_and_report(layer_type: str, conv_cls: type, lin_cls: type) -> None:
    model = _trained()
    new, report = to_bayesian(model, layer_type)  # type: ignore[arg-type]
    assert isinstance(report, ConversionReport)
    assert report.converted == (
        Converted("stem", nn.Conv2d, conv_cls), Converted("block.conv", nn.Conv2d, conv_cls),
        Converted("grouped", nn.Conv2d, conv_cls), Converted("head.1", nn.Linear, lin_cls),
        Converted("head.3", nn.Linear, lin_cls))
    assert report.kept == (
        Kept("bn", nn.BatchNorm2d, "not nn.Linear or nn.Conv2d"),
        Kept("block.norm", nn.BatchNorm2d, "not nn.Linear or nn.Conv2d"),
        Kept("pool", nn.AdaptiveAvgPool2d, "not nn.Linear or nn.Conv2d"),
        Kept("head.0", nn.Flatten, "not nn.Linear or nn.Conv2d"),
        Kept("head.2", nn.ReLU, "not nn.Linear or nn.Conv2d"))
    mods = dict(new.named_modules())
    for c in report.converted:
        assert type(mods[c.name]) is c.new
    # Every leaf of the original is in exactly one list: nothing skipped silently.
    leaves = {n for n, m in model.named_modules() if not list(m.children())}
    assert sorted(leaves) == sorted([c.name for c in report.converted] + [k.name for k in report.kept])
    # The conv options carried over (the MAP test below checks the function; this names the arguments).
    stem = mods["stem"]
    assert isinstance(stem, rv.BayesianConv2d)
    assert (stem.padding, stem.dilation, stem.bias_mu is not None) == ("same", (2, 2), True)
    conv = mods["block.conv"]
    assert isinstance(conv, rv.BayesianConv2d)
    assert (conv.stride, conv.padding_mode, conv.bias_mu) == ((2, 2), "reflect", None)
    assert "stem: Conv2d -> " in str(report) and "bn: BatchNorm2d (not nn.Linear or nn.Conv2d)" in str(report)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layer_type", ["bbb", "lr"])
@pytest.mark.parametrize("moped", [None, 0.1])
def test_map_mode_equals_original_bit_for_bit(dtype: torch.dtype, layer_type: str, moped: float | None) -> None:
    model = _trained(dtype)
    x = _x(dtype)
    with torch.no_grad():
        ref = model(x)
        new, _ = to_bayesian(model, layer_type, moped=moped)  # type: ignore[arg-type]
        _map(new)
        out = new(x)
        assert out.dtype == dtype
        assert torch.equal(out, ref)  # the means are the trained weights, copied (C4)
        _map(new, False)
        assert not torch.equal(new(x), ref)  # and out of MAP mode the layers do sample


def test_channels_last_model_keeps_its_layout() -> None:
    model = _trained().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = _x().to(memory_format=torch.channels_last)
    new, _ = to_bayesian(model, "bbb")
    conv = _layers(new)["stem"]
    assert conv.weight_mu.is_contiguous(memory_format=torch.channels_last)
    _map(new)
    with torch.no_grad():
        assert torch.equal(new(x), model(x))


def _rel_bound(s: torch.Tensor, dtype: torch.dtype, use_softplus: bool) -> torch.Tensor:
    """The relative error of the stored std against ``s``, per element.

    exp: ``rho = log(s)`` in float64. float32 rounds it once: absolute error <= ulp(rho)/2 <= eps |rho| / 2 (the
    float64 log's own error, 2**-52 |rho|, is 2**-29 of that). float64: the log is within 1 ulp, <= eps |rho|.
    ``exp`` turns an absolute error d of rho into a relative one e**d - 1 = d (1 + d/2 + ...), and adds its own
    rounding, <= 1 ulp <= eps relative (EXP-1: 0.99 ulp for the fused float32 kernel; torch's exp is 1.0 ulp). So
    relative error <= eps (|ln s| + 1) to first order.

    softplus: ``rho = inv_softplus(s)``; softplus's relative condition number sigmoid(rho) rho / softplus(rho)
    divided by rho, i.e. sigmoid/softplus, is <= 1, so an absolute error d of rho gives a relative error <= d. SP-2
    bounds the float64 round trip softplus(inv_softplus(s)) by eps (1.5 |ln s| + 3.5); float32 adds a rounding of
    rho (eps |rho| / 2 <= eps |ln s| / 2 + eps s, for rho = s + ln(1 - e^-s)) and softplus's own 2 eps + u (SP-1),
    below that bound for s <= 1. So relative error <= eps (1.5 |ln s| + 3.5).

    The factor 1 + 1e-3 covers the second-order terms: (eps |ln s|)**2 relative, below 1e-3 of eps for every s
    in std_bounds (|ln s| < 180 in float64, < 22 in float32).
    """
    eps = torch.finfo(dtype).eps
    ln = s.to(torch.float64).log().abs()
    first = 1.5 * ln + 3.5 if use_softplus else ln + 1.0
    return eps * first * (1 + 1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("use_softplus", [False, True])
@pytest.mark.parametrize("layer_type", ["bbb", "lr"])
def test_moped_std_is_delta_abs_w(dtype: torch.dtype, use_softplus: bool, layer_type: str) -> None:
    model = _trained(dtype)
    lo, hi = std_bounds(dtype)
    with torch.no_grad():  # the clamped ends: a zero weight, and one whose delta |w| is above the upper bound
        model.head[1].weight[0, 0] = 0.0
        model.head[1].weight[0, 1] = -4 * hi
    delta = 0.3
    new, _ = to_bayesian(model, layer_type, moped=delta, use_softplus=use_softplus)  # type: ignore[arg-type]
    layers = _layers(new)
    assert sorted(layers) == sorted(CONVERTED)
    olds = dict(model.named_modules())
    for name, layer in layers.items():
        old = olds[name]
        assert isinstance(old, (nn.Linear, nn.Conv2d))
        sw, sb = layer.std()
        assert layer.use_softplus is use_softplus
        for got, w in ((sw, old.weight), (sb, old.bias)):
            if w is None:
                assert got is None
                continue
            assert got is not None and got.dtype == dtype
            # The reference in float64: delta |w| is one rounding there, 2**-29 of float32's eps, and within
            # float64's own bound's 1e-3 margin (relative 2**-53 against eps (|ln s| + 1) >= eps).
            s = (delta * w.detach().to(torch.float64).abs()).clamp(lo, hi)
            err = (got.to(torch.float64) - s).abs() / s
            bound = _rel_bound(s, dtype, use_softplus)
            assert bool((err <= bound).all()), f"{name}: max rel err {float((err / bound).max())} x bound"
    head = layers["head.1"].std()[0]
    assert head[0, 2] > lo and head[0, 0] < head[0, 2] and head[0, 1] > head[0, 2]  # the clamped ends were reached


def test_default_std_is_init_std_and_priors_pass_through() -> None:
    model = _trained()
    new, _ = to_bayesian(model, "lr", prior_mean=0.5, prior_std=torch.tensor(2.0))
    for layer in _layers(new).values():
        # A fresh layer's rho, bit for bit (reset_parameters fills log(INIT_STD)); the biases' too.
        assert type(layer) in (rv.LRConv2d, rv.LRLinear) and layer.weight_rho is not None
        assert torch.equal(layer.weight_rho, torch.full_like(layer.weight_rho, math.log(INIT_STD)))
        if layer.bias_rho is not None:
            assert torch.equal(layer.bias_rho, torch.full_like(layer.bias_rho, math.log(INIT_STD)))
        assert torch.equal(layer.prior_mean, torch.tensor([0.5])) and torch.equal(layer.prior_std, torch.tensor([2.0]))


def test_skip_by_name_and_by_type() -> None:
    model = _trained()
    new, report = to_bayesian(model, "bbb", skip=["head.3", "block"])
    mods = dict(new.named_modules())
    assert type(mods["head.3"]) is nn.Linear and type(mods["block"].conv) is nn.Conv2d
    assert [c.name for c in report.converted] == ["stem", "grouped", "head.1"]
    assert Kept("block", _Block, "skipped by name") in report.kept  # a container skips its subtree, reported once
    assert Kept("head.3", nn.Linear, "skipped by name") in report.kept
    assert not any(k.name.startswith("block.") for k in report.kept)

    new, report = to_bayesian(model, "bbb", skip=[nn.Conv2d])
    assert [c.name for c in report.converted] == ["head.1", "head.3"]
    assert {k.name for k in report.kept if k.reason == "skipped by type Conv2d"} == {"stem", "block.conv", "grouped"}
    assert not any(isinstance(m, rv.BayesianConv2d) for m in new.modules())

    new, report = to_bayesian(model, "bbb", include=["head.1", "stem"])
    assert [c.name for c in report.converted] == ["stem", "head.1"]
    assert Kept("head.3", nn.Linear, "not in include") in report.kept


def test_copy_leaves_the_original_untouched_and_inplace_converts_it() -> None:
    model = _trained()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new, _ = to_bayesian(model, "bbb", moped=0.2)
    assert new is not model
    assert [type(m) for m in model.modules()] == [type(m) for m in _trained().modules()]
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():  # no storage shared: training the copy leaves the original alone
        for p in new.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)

    same, report = to_bayesian(model, "lr", inplace=True)
    assert same is model and isinstance(model.head[1], rv.LRLinear)
    assert len(report.converted) == len(CONVERTED)


def test_float64_device_mode_and_requires_grad_are_kept() -> None:
    model = _trained(torch.float64)
    model.head.train()
    model.head[3].weight.requires_grad_(False)
    new, _ = to_bayesian(model, "lr")
    for name, layer in _layers(new).items():
        for p in layer.parameters():
            assert p.dtype == torch.float64 and p.device == torch.device("cpu")
        assert layer.prior_std.dtype == torch.float64
        assert layer.training is name.startswith("head")
    last = _layers(new)["head.3"]
    assert last.weight_rho is not None
    assert not last.weight_mu.requires_grad and not last.weight_rho.requires_grad
    assert last.bias_mu is not None and last.bias_mu.requires_grad


def test_shared_layer_converted_once_and_root_layer() -> None:
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    new, report = to_bayesian(model, "bbb")
    assert new[0] is new[2] and isinstance(new[0], rv.BBBLinear)
    assert [c.name for c in report.converted] == ["0"]

    layer, report = to_bayesian(nn.Linear(3, 2), "lr")
    assert isinstance(layer, rv.LRLinear) and report.converted == (Converted("", nn.Linear, rv.LRLinear),)


def test_elbo_and_predictive_work_on_the_converted_model() -> None:
    model = _trained()
    new, _ = to_bayesian(model, "lr", moped=0.1)
    x = _x()
    y = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    nll = ((new(x) - y) ** 2).mean()
    loss = rv.elbo(new, nll, n_data=100)
    kl = sum(layer.KL()[0] for layer in _layers(new).values())
    assert isinstance(kl, torch.Tensor)
    assert torch.equal(loss.detach(), (nll + kl / 100).detach())
    loss.backward()
    for layer in _layers(new).values():
        assert layer.weight_rho is not None and layer.weight_rho.grad is not None
        assert bool(torch.isfinite(layer.weight_rho.grad).all())
    _map(new)
    with torch.no_grad():
        mean, var = rv.predictive(new, x, samples=8)
    assert mean.shape == var.shape == (5, 3) and bool((var > 0).all())
    assert all(layer._map for layer in _layers(new).values())  # predictive put MAP mode back


def test_errors() -> None:
    model = _trained()
    for lt in ("clt", "cltdet"):
        with pytest.raises(ValueError, match=r"not a drop-in replacement: CLT layers take and return"):
            to_bayesian(model, lt)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"layer_type must be 'bbb' or 'lr', got 'xyz'"):
        to_bayesian(model, "xyz")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expected an nn.Module, got int"):
        to_bayesian(3)  # type: ignore[arg-type]
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"moped .* must be finite and > 0"):
            to_bayesian(model, moped=bad)
    with pytest.raises(TypeError, match=r"moped must be None or a real number"):
        to_bayesian(model, moped=True)
    with pytest.raises(ValueError, match=r"prior_std must be one number .* got a tensor of shape \(2,\)"):
        to_bayesian(model, prior_std=torch.ones(2))
    with pytest.raises(ValueError, match=r"prior_std must be > 0"):
        to_bayesian(model, prior_std=-1.0)
    with pytest.raises(ValueError, match=r"skip names 'head.9', which is no module"):
        to_bayesian(model, skip=["head.9"])
    with pytest.raises(TypeError, match=r"skip takes module names"):
        to_bayesian(model, skip=[3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"include names 'bn', a BatchNorm2d; only modules of type nn.Linear"):
        to_bayesian(model, include=["bn"])
    with pytest.raises(ValueError, match=r"include names 'nope', which is no module"):
        to_bayesian(model, include=["nope"])
    with pytest.raises(ValueError, match=r"'stem' is both in include and in skip"):
        to_bayesian(model, include=["stem"], skip=["stem"])
    for skip in (["block"], [nn.Conv2d]):
        with pytest.raises(ValueError, match=r"include names 'block.conv', but skip leaves it"):
            to_bayesian(model, include=["block.conv"], skip=skip)
    with pytest.raises(TypeError, match=r"include must be a list of module names"):
        to_bayesian(model, include="stem")


def test_modules_it_cannot_convert_raise_or_are_reported() -> None:
    model = _trained()
    handle = model.grouped.register_forward_hook(lambda m, a, out: out * 2)
    with pytest.raises(ValueError, match=r"'grouped' \(Conv2d\) has hooks \(_forward_hooks"):
        to_bayesian(model, inplace=True)
    assert type(model.stem) is nn.Conv2d  # every check runs before anything is replaced
    assert to_bayesian(model, skip=["grouped"])[1].converted[-1].name == "head.3"
    handle.remove()

    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match=r"'0' shares a parameter with '1' \(tied weights\)"):
        to_bayesian(tied)

    conv = nn.Conv2d(2, 2, 3)
    conv.padding_mode = "mirror"
    with pytest.raises(ValueError, match=r"padding_mode 'mirror', which the Bayesian convolutions do not have"):
        to_bayesian(nn.Sequential(conv))

    lin = nn.Linear(3, 3)
    lin.scale = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"has the parameters \['bias', 'scale', 'weight'\], not weight and bias"):
        to_bayesian(nn.Sequential(lin))

    bad = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        bad[0].weight[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"non-finite weights or biases, so MOPED's std"):
        to_bayesian(bad, moped=0.1)
    assert isinstance(to_bayesian(bad)[0][0], rv.BBBLinear)  # without MOPED the means are just copied

    mixed = nn.Linear(2, 2)
    mixed.bias = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"a bias of torch.float64"):
        to_bayesian(mixed)

    # Subclasses are left alone and reported: nn.MultiheadAttention reads out_proj.weight itself.
    attn = nn.Sequential(nn.MultiheadAttention(4, 2), nn.Linear(4, 4))
    new, report = to_bayesian(attn)
    assert type(new[0].out_proj) is type(attn[0].out_proj) and isinstance(new[1], rv.BBBLinear)
    assert report.kept[0].name == "0.out_proj" and "a subclass of nn.Linear" in report.kept[0].reason
    with pytest.raises(TypeError, match=r"include names '0.out_proj', a NonDynamicallyQuantizableLinear"):
        to_bayesian(attn, include=["0.out_proj"])

    compiled = nn.Sequential(torch.compile(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match=r"'0' is a torch.compile'd module; convert the uncompiled model"):
        to_bayesian(compiled)
