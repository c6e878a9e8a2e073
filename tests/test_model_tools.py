"""forward_with_uncertainty and replace_norm_layers (issue 3, model-level tools)."""

from __future__ import annotations

import torch
from torch import nn

import rln_verified as rv


def _cnn(norm: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm(8), nn.Tanh(), nn.Conv2d(8, 4, 3, padding=1), norm(4))


def test_seed_quick_start_in_our_form() -> None:
    """The seed's quick start (a Sequential with Bayesian norm layers, asking for uncertainty) works."""
    model = _cnn(rv.BayesianRLayerNorm2d)
    x = torch.randn(2, 3, 8, 8)
    out, us = forward_out = rv.forward_with_uncertainty(model, x)
    assert forward_out[0].shape == (2, 4, 8, 8)
    assert set(us) == {"1", "4"}
    assert us["1"].shape == (2, 8, 1, 1) and us["4"].shape == (2, 4, 1, 1)
    assert torch.equal(out, model(x))
    # u matches what the layer returns when asked directly
    h = model[0](x)
    _, u1 = model[1](h, return_uncertainty=True)
    assert torch.equal(us["1"], u1)
    assert all(((u >= 0) & (u < 1)).all() for u in us.values())


def test_replace_with_alpha_zero_is_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4)).double()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(-1, 1)
    x = torch.randn(5, 6, dtype=torch.float64)
    before = model(x)
    rv.replace_norm_layers(model, alpha=0.0)
    assert isinstance(model[1], rv.BayesianRLayerNorm)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)


def test_replace_group_and_instance_norm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(8, 8), nn.Conv2d(8, 8, 3), nn.InstanceNorm2d(8, affine=True),
                          nn.GroupNorm(2, 8))
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    model = model.double()
    before = model(x)
    rv.replace_norm_layers(model, alpha=0.0, group_norm=True, instance_norm=True)
    assert isinstance(model[1], rv.BayesianRLayerNorm2d) and isinstance(model[3], rv.BayesianRLayerNorm2d)
    assert isinstance(model[4], nn.GroupNorm)  # 2 groups of 4 channels: not a per-channel norm, left alone
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-10)
