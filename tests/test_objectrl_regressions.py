"""One regression test per defect of the public ObjectRL 0.2.x Bayesian layers.

Each test names the defect and fails on an implementation that still has it.
"""

from __future__ import annotations

import pytest
import torch

from rln_verified._bayesian_linear import BayesianLinear, CLTLinear, CLTLinearDet, LRLinear
from rln_verified._bayesian_mlp import BayesianMLP


@pytest.mark.claim("C3")
@pytest.mark.parametrize("act", ["relu", "crelu"])
def test_clt_backward_has_no_inplace_error(act: str) -> None:
    """ObjectRL: relu_moments assigned into its mean in place after using it, so backward raised
    'modified by an inplace operation' and CLT layers could not be trained."""
    torch.manual_seed(0)
    first = CLTLinear(4, 3, act=act, is_input=True)  # type: ignore[arg-type]
    last = CLTLinear(3 * (2 if act == "crelu" else 1), 2, is_output=True)
    m, v = last(*first(torch.randn(5, 4)))
    assert v is not None
    (m.sum() + v.sum()).backward()
    for p in [*first.parameters(), *last.parameters()]:
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())


@pytest.mark.claim("C3")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clt_variance_nonnegative_in_the_tail(dtype: torch.dtype) -> None:
    """ObjectRL: the textbook ReLU variance (s^2 + m^2) Phi + m s phi - mean^2 cancels to negative values
    for pre-activations far below 0 (mean/std ~ -10 and beyond)."""
    layer = CLTLinear(2, 64, is_input=True, dtype=dtype)
    with torch.no_grad():
        layer.bias_mu.copy_(-torch.logspace(-1, 2, 64, dtype=dtype))  # type: ignore[union-attr]
    mean, var = layer(torch.ones(3, 2, dtype=dtype))
    assert var is not None
    assert bool((var >= 0).all()) and bool((mean >= 0).all())
    # The textbook formula on the same pre-activations goes negative, so this input does reach the tail.
    pre = CLTLinear(2, 64, is_input=True, is_output=True, dtype=dtype)
    pre.load_state_dict(layer.state_dict())
    m, v = pre(torch.ones(3, 2, dtype=dtype))
    assert v is not None
    s = v.sqrt()
    a = m / s
    cdf = 0.5 * (1 + torch.erf(a / 2**0.5))
    pdf = torch.exp(-0.5 * a * a) / (2 * torch.pi) ** 0.5
    mean_tb = m * cdf + s * pdf
    var_tb = (s * s + m * m) * cdf + m * s * pdf - mean_tb**2
    assert bool((var_tb < 0).any()), "the pinned input no longer reaches the cancelling tail"


@pytest.mark.claim("C1")
def test_kl_counts_elements_not_shape_sum() -> None:
    """ObjectRL: KL() returned sum(weight.shape) + sum(bias.shape) = 50 for a 10-to-20 layer; the count is 220."""
    _, n = LRLinear(10, 20).KL()
    assert n == 220
    _, n = LRLinear(10, 20, bias=False).KL()
    assert n == 200


def test_cltdet_removes_std_parameters() -> None:
    """ObjectRL: CLTLinearDet defined ``__init`` (a typo), so weight_rho and bias_rho stayed as parameters."""
    layer = CLTLinearDet(4, 3)
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"weight_mu", "bias_mu"}
    assert layer.weight_rho is None and layer.bias_rho is None
    with pytest.raises(ValueError, match="no learned standard deviation"):
        layer.std()


@pytest.mark.claim("C1")
def test_int_prior_std_accepted() -> None:
    """ObjectRL: prior_std=1 (an int) raised ValueError ('needs to be a float or a torch.Tensor')."""
    layer = LRLinear(3, 2, prior_mean=0, prior_std=1)
    assert float(layer.prior_std) == 1.0 and layer.prior_std.dtype == layer.weight_mu.dtype
    kl_int, _ = layer.KL()
    ref = LRLinear(3, 2, prior_mean=0.0, prior_std=1.0)
    ref.load_state_dict(layer.state_dict())
    assert torch.equal(kl_int, ref.KL()[0])


@pytest.mark.claim("C6")
def test_softplus_finite_at_100() -> None:
    """ObjectRL: softplus was log(1 + exp(x)), inf at x = 100 in float32."""
    x = torch.tensor([100.0, 1000.0, -100.0])
    y = BayesianLinear.softplus(x)
    assert bool(torch.isfinite(y).all()) and float(y[0]) == 100.0 and float(y[1]) == 1000.0 and float(y[2]) > 0
    layer = LRLinear(2, 2, use_softplus=True)
    with torch.no_grad():
        layer.weight_rho.fill_(100.0)  # type: ignore[union-attr]
    ws, _ = layer.std()
    assert bool(torch.isfinite(ws).all())


@pytest.mark.claim("C6")
@pytest.mark.parametrize("bias", [False, True])
def test_lr_rho_gradient_finite_at_zero_input(bias: bool) -> None:
    """ObjectRL: LRLinear took sqrt of a zero variance at a zero input, so rho's gradient was NaN."""
    torch.manual_seed(0)
    layer = LRLinear(3, 2, bias=bias)
    x = torch.zeros(4, 3, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight_rho is not None and layer.weight_rho.grad is not None
    assert bool(torch.isfinite(layer.weight_rho.grad).all())
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


@pytest.mark.claim("C3")
@pytest.mark.parametrize("layer_type", ["clt", "cltdet"])
@pytest.mark.parametrize("act", ["relu", "crelu"])
def test_clt_mlp_runs(layer_type: str, act: str) -> None:
    """ObjectRL: BayesianMLP(layer_type='clt') could not run: nn.Sequential handed the next layer a tuple, and
    is_input/is_output were never set."""
    net = BayesianMLP(3, 2, depth=3, width=5, layer_type=layer_type, act=act)  # type: ignore[arg-type]
    layers = net.bayesian_layers()
    assert [(lay.is_input, lay.is_output) for lay in layers if isinstance(lay, CLTLinear)] == [
        (True, False), (False, False), (False, True)]
    out = net(torch.randn(6, 3))
    assert isinstance(out, tuple)
    m, v = out
    assert m.shape == (6, 2)
    if layer_type == "clt":
        assert v is not None and v.shape == (6, 2) and bool((v > 0).all())
        m.sum().add(v.sum()).backward()
    # ObjectRL's calling convention, a (mean, var) tuple as one argument, also works.
    out2 = net((torch.randn(6, 3), None))
    assert isinstance(out2, tuple) and out2[0].shape == (6, 2)
