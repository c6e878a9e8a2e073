"""Model tools: forward_with_uncertainty (the seed's quick start in our form) and replace_norm_layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rln_verified as rv
from rln_verified._tools import forward_with_uncertainty, replace_norm_layers


def _randomize_affine(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") or name.endswith("bias"):
                p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 1.5 + 0.25)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.norm = rv.BayesianRLayerNorm(8)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.norm(self.proj(x)) * scale


class _AsksItself(nn.Module):
    """A model that uses the (y, u) form of a layer itself: the tool must not change what it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = rv.BayesianRLayerNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, u = self.norm(x, return_uncertainty=True)
        return y * (1 - u)


def test_quick_start_sequential() -> None:
    """The seed's README example on an nn.Sequential: output unchanged, u per Bayesian layer, keepdim."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), rv.BayesianRLayerNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3),
                          rv.RLayerNorm2d(8), rv.BayesianRLayerNorm2d(8))
    x = torch.randn(2, 3, 10, 10)
    out, us = forward_with_uncertainty(model, x)
    assert torch.equal(out, model(x))
    assert set(us) == {"1", "5"}  # the plain RLayerNorm2d has no u
    h = model[0](x)
    _, u1 = model[1](h, return_uncertainty=True)
    assert torch.equal(us["1"], u1) and us["1"].shape == (2, 16, 1, 1)
    h5 = model[4](model[3](model[2](model[1](h))))
    _, u5 = model[5](h5, return_uncertainty=True)
    assert torch.equal(us["5"], u5)
    for m in model.modules():  # no hook is left behind
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_nested_names_kwargs_and_user_tuple() -> None:
    torch.manual_seed(1)
    block = nn.Sequential(_Block())
    x = torch.randn(3, 8)
    out, us = forward_with_uncertainty(block, x)
    assert set(us) == {"0.norm"} and us["0.norm"].shape == (3, 1)
    assert torch.equal(out, block(x))
    inner = _Block()
    out2, _ = forward_with_uncertainty(inner, x, scale=2.0)  # keyword arguments reach the model
    assert torch.equal(out2, inner(x, scale=2.0))
    asks = _AsksItself()
    z = torch.randn(2, 4, 5, 6)
    out3, us3 = forward_with_uncertainty(asks, z)
    assert torch.equal(out3, asks(z)) and set(us3) == {"norm"}


def test_shared_layer_called_twice_and_no_bayesian_layers() -> None:
    norm = rv.BayesianRLayerNorm(6)
    model = nn.Sequential(norm, nn.Linear(6, 6), norm)
    x = torch.randn(2, 6)
    out, us = forward_with_uncertainty(model, x)
    assert set(us) == {"0", "0#1"}  # named_modules lists a shared module once, under its first name
    assert torch.equal(us["0"], norm(x, return_uncertainty=True)[1])
    assert torch.equal(us["0#1"], norm(model[1](norm(x)), return_uncertainty=True)[1])
    assert torch.equal(out, model(x))
    plain = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6))
    out_p, us_p = forward_with_uncertainty(plain, x)
    assert us_p == {} and torch.equal(out_p, plain(x))


def test_hooks_removed_when_forward_raises() -> None:
    model = nn.Sequential(rv.BayesianRLayerNorm2d(3))
    with pytest.raises(ValueError, match="3 channels"):
        forward_with_uncertainty(model, torch.randn(1, 4, 5, 5))
    assert not model[0]._forward_hooks and not model[0]._forward_pre_hooks
    with pytest.raises(TypeError, match=r"nn\.Module"):
        forward_with_uncertainty(lambda t: t, torch.randn(2))  # type: ignore[arg-type]


def _n6_bound(x: torch.Tensor, y_ref: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
              group_dims: tuple[int, ...]) -> torch.Tensor:
    """N6's tolerance in float64 (proofs/norm.md, N2 with alpha = 0), doubled because both sides round:
    u [(log2 M + 4) A/sigma + (3 log2 M + 24)(1 + |z|)] |gamma| + u |beta|, z = (y_ref - beta)/gamma."""
    u = 2.0**-53
    m = math.prod(x.shape[d] for d in group_dims)
    lg = math.log2(m)
    a = x.abs().amax(dim=group_dims, keepdim=True)
    sigma = torch.sqrt(x.var(dim=group_dims, unbiased=False, keepdim=True) + 1e-5)
    z = (y_ref - beta) / gamma
    return 2 * (u * ((lg + 4) * a / sigma + (3 * lg + 24) * (1 + z.abs())) * gamma.abs() + u * beta.abs())


@pytest.mark.claim("N6")
def test_replace_norm_layers_alpha_zero_equals_original() -> None:
    """Every converted layer, at alpha = 0, computes the replaced layer's function on the input it receives."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.GroupNorm(8, 8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.InstanceNorm2d(8, affine=True),
        nn.GroupNorm(2, 8), nn.Flatten(2), nn.LayerNorm(16),
    ).double()
    _randomize_affine(model, 3)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64) * 5 + 3
    seen: dict[int, torch.Tensor] = {}
    hooks = [model[i].register_forward_pre_hook(lambda mod, a, i=i: seen.__setitem__(i, a[0]))
             for i in (1, 4, 7)]
    ref_out = model(x)
    for h in hooks:
        h.remove()
    originals = {i: model[i] for i in (1, 4, 5, 7)}
    converted = replace_norm_layers(model, alpha=0.0, group_norm=True, instance_norm=True)
    assert converted is model
    assert isinstance(model[1], rv.BayesianRLayerNorm2d) and isinstance(model[4], rv.BayesianRLayerNorm2d)
    assert isinstance(model[7], rv.BayesianRLayerNorm)
    assert model[5] is originals[5]  # GroupNorm(2, 8) is another grouping: left alone
    for i, dims in ((1, (2, 3)), (4, (2, 3)), (7, (2,))):
        old, new = originals[i], model[i]
        assert torch.equal(new.weight.reshape(old.weight.shape), old.weight)
        assert torch.equal(new.bias.reshape(old.bias.shape), old.bias)
        assert new.eps == old.eps and new.weight.dtype == torch.float64
        inp = seen[i]
        want = old(inp)
        got = new(inp)
        shape = (1, -1, 1, 1) if inp.ndim == 4 else (1, 1, -1)
        gamma, beta = old.weight.reshape(shape), old.bias.reshape(shape)
        bound = _n6_bound(inp, want, gamma, beta, dims)
        ratio = float(((got - want).abs() / bound).max().detach())
        print(f"layer {i}: worst |ours - torch| / N6 bound = {ratio:.3g}")
        assert ratio <= 1.0, f"layer {i}: {ratio}"
    assert torch.isfinite(model(x)).all() and model(x).shape == ref_out.shape


def test_replace_norm_layers_options_and_errors() -> None:
    ln = nn.LayerNorm((4, 6), eps=1e-6, bias=False)
    ln.train(False)
    new = replace_norm_layers(ln, bayesian=False, lambda_init=0.25)
    assert isinstance(new, rv.RLayerNorm) and new.bias is None and not new.training
    assert new.eps == 1e-6 and abs(float(new.lambda_.detach()) - 0.25) < 1e-6
    model = nn.Sequential(nn.GroupNorm(4, 4), nn.InstanceNorm2d(4, affine=True))
    replace_norm_layers(model)  # the 2d conversions are opt-in
    assert isinstance(model[0], nn.GroupNorm) and isinstance(model[1], nn.InstanceNorm2d)
    frozen = nn.Sequential(nn.LayerNorm(5))
    frozen[0].weight.requires_grad_(False)
    replace_norm_layers(frozen)
    assert not frozen[0].weight.requires_grad and frozen[0].bias.requires_grad
    with pytest.raises(ValueError, match="track_running_stats"):
        replace_norm_layers(nn.Sequential(nn.InstanceNorm2d(4, track_running_stats=True)), instance_norm=True)
    with pytest.raises(ValueError, match="last normalized dim"):
        replace_norm_layers(nn.Sequential(nn.LayerNorm(1)))
    with pytest.raises(ValueError, match="alpha"):
        replace_norm_layers(nn.Sequential(nn.LayerNorm(4)), alpha=-1.0)


def _bayes_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), rv.BayesianRLayerNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                         rv.BayesianRLayerNorm2d(4), nn.Flatten(2), rv.BayesianRLayerNorm(16))


def _assert_same_result(got: tuple[torch.Tensor, dict[str, torch.Tensor]],
                        want: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> None:
    assert set(got[1]) == set(want[1]) == {"1", "4", "6"}  # the original module's names, no "_orig_mod."
    for key, u in want[1].items():
        assert torch.equal(got[1][key], u), key
    assert torch.equal(got[0], want[0])


def test_compiled_model_gives_the_eager_u() -> None:
    """torch.compile(model): the same output and the same u per layer as the eager model, also after the compiled
    model has run on its own (its cached graph has no hooks: before the fix this returned {})."""
    torch.manual_seed(4)
    model = _bayes_cnn()
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))  # the compiled graph runs, and is cached without hooks
    want = forward_with_uncertainty(model, x)
    _assert_same_result(forward_with_uncertainty(compiled, x), want)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_model_compiled_in_place_gives_the_eager_u() -> None:
    """module.compile(): the eager call runs for this forward and the compiled call is put back afterwards."""
    torch.manual_seed(5)
    model = _bayes_cnn()
    x = torch.randn(2, 3, 8, 8)
    want = forward_with_uncertainty(model, x)
    model.compile(backend="eager", fullgraph=True)
    model[1].compile(backend="eager")
    compiled_calls = (model._compiled_call_impl, model[1]._compiled_call_impl)
    model(x)  # the compiled call runs and is cached without hooks
    _assert_same_result(forward_with_uncertainty(model, x), want)
    assert (model._compiled_call_impl, model[1]._compiled_call_impl) == compiled_calls


def test_compiled_submodule_is_refused() -> None:
    inner = _bayes_cnn()
    model = nn.Sequential(torch.compile(inner, backend="eager"), nn.ReLU())
    with pytest.raises(ValueError, match=r"submodule '0' is a torch.compile'd module.*Compile the whole model"):
        forward_with_uncertainty(model, torch.randn(2, 3, 8, 8))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in inner.modules())
    plain = nn.Sequential(torch.compile(nn.Linear(4, 4), backend="eager"), rv.BayesianRLayerNorm(4))
    out, us = forward_with_uncertainty(plain, torch.randn(3, 4))  # nothing Bayesian inside the compiled part
    assert set(us) == {"1"} and out.shape == (3, 4)


def test_replace_norm_layers_on_compiled_models() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(3, 8)
    compiled(x)
    assert replace_norm_layers(compiled, alpha=0.0) is compiled
    assert isinstance(model[1], rv.BayesianRLayerNorm)
    assert torch.equal(compiled(x), model(x))  # the swap is seen: dynamo recompiles
    wrapped_layer = nn.Sequential(torch.compile(nn.LayerNorm(8), backend="eager"))
    with pytest.raises(TypeError, match=r"torch\.compile applied to the norm layer itself"):
        replace_norm_layers(wrapped_layer)
    assert isinstance(wrapped_layer[0]._orig_mod, nn.LayerNorm)  # refused before anything changed


def test_replace_norm_layers_without_affine_takes_the_models_dtype_and_is_all_or_nothing() -> None:
    """A norm layer with no parameters or buffers (no affine) is replaced in the model's dtype (it came out float32
    in a float64 model), and a layer that cannot be converted raises a ValueError naming it before anything is
    swapped (the model was left half converted)."""
    from torch import nn

    import rln_verified as rv

    net = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8, elementwise_affine=False)).double()
    rv.replace_norm_layers(net)
    assert isinstance(net[1], rv.BayesianRLayerNorm) and net[1].lambda_raw.dtype == torch.float64
    x = torch.randn(3, 8, dtype=torch.float64)
    assert net(x).dtype == torch.float64
    net = nn.Sequential(nn.LayerNorm(8), nn.Sequential(nn.LayerNorm((8, 1))))
    with pytest.raises(ValueError, match=r"^replace_norm_layers: cannot convert 1\.0 \(LayerNorm\(\(8, 1\)"):
        rv.replace_norm_layers(net)
    assert type(net[0]) is nn.LayerNorm and type(net[1][0]) is nn.LayerNorm
