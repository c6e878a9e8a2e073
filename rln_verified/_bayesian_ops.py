"""The Bayesian linear layers' forward: one functional entry per layer type, and the single autograd nodes it runs.

``bbb_linear``, ``lr_linear``, ``clt_linear`` and ``clt_linear_det`` are each layer's whole forward: MAP mode, the
autocast policy (compute in float32, or the parameters' wider dtype, with autocast off; return the autocast dtype,
as ``nn.Linear`` does) and the choice of path. Each layer's ``forward`` is one call of its entry.

Each layer's sample or moments is one autograd node with a hand-written backward (``BBBSample``, ``LRSample``,
``CLTPreact``; C2, C3, C5, C6 in ``proofs/bayesian_linear.md``), which forms the same values as the ``F.linear``
forms and each product the gradients need once; float32 on CPU, the std's exp (EXP-1) and the CLT activation
(RELU-6) run the fused kernel of ``_native/gauss.py``. The plain torch forms (``_bbb_plain``, ``_lr_plain``,
``_clt_plain``) give the same values: every hand-written backward, asked for a graph (``create_graph=True``), returns
their VJP instead (``_dispatch.recompute_vjp``), so second and higher derivatives are right.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from rln_verified._bayesian_std import (
    eager_nodes_ok,
    no_autocast_backward,
    posterior_std,
    safe_sqrt,
    safe_sqrt_plain,
    sqrt_and_mask,
    squared_std,
    std_bounds,
    std_plain,
)
from rln_verified._dispatch import recompute_vjp
from rln_verified._gaussian import crelu_moments, neg_relu_moments, relu_moments
from rln_verified._native import gauss

Act = Literal["relu", "crelu"]
#: A source of standard normal noise: ``(slot, shape, dtype, device) -> tensor``, ``slot`` "weight" or "bias" (the
#: local reparameterization's output noise is its "weight" slot). The layers pass one that keeps the noise between
#: calls under ``manual_reset`` (C5).
Noise = Callable[[str, tuple[int, ...], torch.dtype, torch.device], torch.Tensor]


def _bbb_plain(x: torch.Tensor, wm: torch.Tensor, rho_w: torch.Tensor, eps_w: torch.Tensor, bm: torch.Tensor | None,
               rho_b: torch.Tensor | None, eps_b: torch.Tensor | None, lo: float, hi: float) -> tuple[torch.Tensor]:
    """BBBSample's values in plain torch (the recomputed VJP's formula)."""
    w = torch.addcmul(wm, torch.exp(rho_w.clamp(lo, hi)), eps_w)
    b = None
    if bm is not None and rho_b is not None and eps_b is not None:
        b = torch.addcmul(bm, torch.exp(rho_b.clamp(lo, hi)), eps_b)
    return (F.linear(x, w, b),)


def _lr_plain(x: torch.Tensor, wm: torch.Tensor, bm: torch.Tensor | None, rho_w: torch.Tensor,
              rho_b: torch.Tensor | None, eps: torch.Tensor, lo: float, hi: float) -> tuple[torch.Tensor]:
    """LRSample's values in plain torch."""
    m = F.linear(x, wm, bm)
    v = F.linear(x * x, gauss.exp_clamp_plain(rho_w, lo, hi, True), std_plain(rho_b, lo, hi, True))
    return (torch.addcmul(m, safe_sqrt_plain(v)[0], eps),)


def _clt_plain(mu_h: torch.Tensor, var_h: torch.Tensor | None, wm: torch.Tensor, bm: torch.Tensor | None,
               sw: torch.Tensor, sb: torch.Tensor | None, rho_bounds: tuple[float, float] | None,
               act: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """CLTPreact's values in plain torch (C3, and the activation's moments from RELU-1's plain forms)."""
    if rho_bounds is not None:
        wv = gauss.exp_clamp_plain(sw, *rho_bounds, True)
        bv = std_plain(sb, *rho_bounds, True)
    else:
        wv, bv = sw, sb
    m = F.linear(mu_h, wm, bm)
    if var_h is None:
        v = F.linear(mu_h * mu_h, wv, bv)
    else:
        v = F.linear(var_h + mu_h * mu_h, wv, bv) + F.linear(var_h, wm * wm)
    if act is None:
        return m, v
    s = safe_sqrt_plain(v)[0]
    mean, var = gauss.relu_moments_plain(m, s)
    if act == "crelu":
        mean_n, var_n = gauss.relu_moments_plain(-m, s)
        mean, var = torch.cat([mean, mean_n], dim=-1), torch.cat([var, var_n], dim=-1)
    return mean, var


class BBBSample(torch.autograd.Function):
    r"""BBBLinear's sample for a 2-D input in one autograd node (C5, C6):

    .. math:: y = x (\mu_W + \sigma_W \varepsilon_W)^\top + \mu_b + \sigma_b \varepsilon_b,\qquad
              \sigma = \exp(\mathrm{clamp}(\rho, lo, hi)),

    the values of ``F.linear(x, addcmul(mu, std(), eps), ...)``. Backward: ``dx = g W``, ``dmu_W = g^T x``,
    ``drho_W = dmu_W eps_W sigma_W`` (0 where rho is saturated), and likewise for the bias with ``g`` summed.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, wm: torch.Tensor, rho_w: torch.Tensor, eps_w: torch.Tensor,
                bm: torch.Tensor | None, rho_b: torch.Tensor | None, eps_b: torch.Tensor | None, lo: float,
                hi: float) -> torch.Tensor:
        sd_w, out_w, _ = squared_std(rho_w, lo, hi, square=False)
        w = torch.addcmul(wm, sd_w, eps_w)
        b = sd_b = out_b = None
        if bm is not None and rho_b is not None and eps_b is not None:
            sd_b, out_b, _ = squared_std(rho_b, lo, hi, square=False)
            b = torch.addcmul(bm, sd_b, eps_b)
        ctx.save_for_backward(x, w, sd_w, eps_w, out_w, sd_b, eps_b, out_b, wm, rho_w, bm, rho_b)
        ctx.bounds = (lo, hi)
        return torch.addmm(b, x, w.t()) if b is not None else torch.mm(x, w.t())

    @staticmethod
    @no_autocast_backward
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, sd_w, eps_w, out_w, sd_b, eps_b, out_b, wm, rho_w, bm, rho_b = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: the VJP of the plain form, every order
            return recompute_vjp(_bbb_plain, (x, wm, rho_w, eps_w, bm, rho_b, eps_b, *ctx.bounds),
                                 (*need[:7], False, False), (g,))
        g_x = torch.mm(g, w) if need[0] else None
        g_wm = g_rw = g_bm = g_rb = None
        if need[1] or need[2]:
            g_w = torch.mm(g.t(), x)
            if need[2]:
                g_rw = torch.mul(g_w, eps_w).mul_(sd_w)
                if out_w is not None:
                    g_rw.masked_fill_(out_w, 0.0)
            g_wm = g_w if need[1] else None
        if sd_b is not None and (need[4] or need[5]):
            g_b = g.sum(0)
            if need[5]:
                g_rb = torch.mul(g_b, eps_b).mul_(sd_b)
                if out_b is not None:
                    g_rb.masked_fill_(out_b, 0.0)
            g_bm = g_b if need[4] else None
        return g_x, g_wm, g_rw, None, g_bm, g_rb, None, None, None


class LRSample(torch.autograd.Function):
    r"""LRLinear's sample for a 2-D input in one autograd node (C2, C6):

    .. math:: y = x\mu_W^\top + \mu_b + \sqrt{\max(v, \mathrm{tiny})}\,\varepsilon,\qquad
              v = x^2 (\sigma_W^2)^\top + \sigma_b^2,\quad \sigma = \exp(\mathrm{clamp}(\rho, lo, hi)),

    the values of the autograd form (``F.linear``, :func:`safe_sqrt`, ``addcmul``). Backward, with
    ``q = 2 dL/dv = g eps / s`` (0 where ``v < tiny``): ``dx = g mu_W + x (q sigma_W^2)``,
    ``dmu_W = g^T x``, ``drho_W = sigma_W^2 (q^T x^2)`` (0 where saturated), and the bias sums.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, wm: torch.Tensor, bm: torch.Tensor | None, rho_w: torch.Tensor,
                rho_b: torch.Tensor | None, eps: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        wv, out_w, _ = squared_std(rho_w, lo, hi)
        bv, out_b, _ = squared_std(rho_b, lo, hi) if rho_b is not None else (None, None, None)
        m = torch.addmm(bm, x, wm.t()) if bm is not None else torch.mm(x, wm.t())
        x2 = x * x
        v = torch.addmm(bv, x2, wv.t()) if bv is not None else torch.mm(x2, wv.t())
        s, low = sqrt_and_mask(v)
        ctx.save_for_backward(x, wm, wv, bv, x2, s, eps, low, out_w, out_b, bm, rho_w, rho_b)
        ctx.bounds = (lo, hi)
        return torch.addcmul(m, s, eps)

    @staticmethod
    @no_autocast_backward
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, wm, wv, bv, x2, s, eps, low, out_w, out_b, bm, rho_w, rho_b = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: the VJP of the plain form, every order
            return recompute_vjp(_lr_plain, (x, wm, bm, rho_w, rho_b, eps, *ctx.bounds),
                                 (*need[:6], False, False), (g,))
        q = torch.mul(g, eps).div_(s)  # 2 dL/dv
        if low is not None:
            q.masked_fill_(low, 0.0)
        g_x = g_wm = g_bm = g_rw = g_rb = None
        if need[0]:
            g_x = torch.mm(g, wm).addcmul_(x, torch.mm(q, wv))
        if need[1]:
            g_wm = torch.mm(g.t(), x)
        if need[2] and bv is not None:
            g_bm = g.sum(0)
        if need[3]:
            g_rw = torch.mm(q.t(), x2).mul_(wv)
            if out_w is not None:
                g_rw.masked_fill_(out_w, 0.0)
        if need[4] and bv is not None:
            g_rb = q.sum(0).mul_(bv)
            if out_b is not None:
                g_rb.masked_fill_(out_b, 0.0)
        return g_x, g_wm, g_bm, g_rw, g_rb, None, None, None


class CLTPreact(torch.autograd.Function):
    r"""The CLT pre-activation moments (C3) of a 2-D input with a hand-written backward, and optionally the
    activation's moments through the fused float32 kernel (RELU-6), all in one autograd node:

    .. math:: m = \mu_h\mu_W^\top + \mu_b,\qquad v = (v_h + \mu_h^2)(\sigma_W^2)^\top + v_h(\mu_W^2)^\top + \sigma_b^2,

    the same sums as the ``F.linear`` form, accumulated by two ``addmm`` (no full-size sum of two products). The
    backward forms each of the six products the gradients need once:
    ``dmu_h = g_m mu_W + 2 mu_h (g_v sigma_W^2)``, ``dv_h = g_v sigma_W^2 + g_v mu_W^2``,
    ``dmu_W = g_m^T mu_h + 2 mu_W (g_v^T v_h)``, ``dsigma_W^2 = g_v^T (v_h + mu_h^2)``, and the bias sums.
    ``var_h`` None: a deterministic input (``v_h = 0``).

    ``sw``, ``sb`` are the variances ``sigma^2``, or, with ``rho_bounds = (lo, hi)``, the ``rho`` of
    ``sigma = exp(clamp(rho, lo, hi))`` (:func:`squared_std`); their gradient is then
    ``dsigma^2 2 sigma^2``, 0 where rho is saturated. ``act`` "relu" or "crelu" (float32 CPU only): the outputs
    are the activation's moments from ``(m, v)``, bit for bit those of ``relu_moments(m, safe_sqrt(v))``.
    """

    @staticmethod
    def forward(ctx: Any, mu_h: torch.Tensor, var_h: torch.Tensor | None, wm: torch.Tensor, bm: torch.Tensor | None,
                sw: torch.Tensor, sb: torch.Tensor | None, rho_bounds: tuple[float, float] | None,
                act: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        out_w = out_b = wm2 = None
        if rho_bounds is None:
            wv, bv = sw, sb
            if var_h is not None:
                wm2 = wm * wm
        else:  # sigma^2 and, in the same pass, mu_W^2
            wv, out_w, wm2 = squared_std(sw, *rho_bounds, w=wm if var_h is not None else None)
            bv, out_b, _ = squared_std(sb, *rho_bounds) if sb is not None else (None, None, None)
        m = torch.addmm(bm, mu_h, wm.t()) if bm is not None else torch.mm(mu_h, wm.t())
        s1 = mu_h * mu_h if var_h is None else torch.addcmul(var_h, mu_h, mu_h)
        v = torch.addmm(bv, s1, wv.t()) if bv is not None else torch.mm(s1, wv.t())
        if var_h is not None:
            assert wm2 is not None
            v.addmm_(var_h, wm2.t())
        ctx.cfg = (bm is not None, sb is not None, rho_bounds is not None, act)
        ctx.plain_args = (rho_bounds, act)
        ctx.n_saved = 9 if act is None else 14
        if act is None:
            ctx.save_for_backward(mu_h, var_h, wm, wv, wm2, s1, bv, out_w, out_b, bm, sw, sb)
            return m, v
        # safe_sqrt(v) = sqrt(clamp_min(v, tiny)): the kernel takes torch's sqrt(v) and applies the clamp.
        sd = torch.sqrt(v)
        mean, var, aux = gauss.forward_raw(m, sd, v)
        aux_n = None
        if act == "crelu":
            mean_n, var_n, aux_n = gauss.forward_raw(-m, sd, v)
            mean, var = torch.cat([mean, mean_n], dim=-1), torch.cat([var, var_n], dim=-1)
        ctx.save_for_backward(mu_h, var_h, wm, wv, wm2, s1, bv, out_w, out_b, m, v, sd, aux, aux_n, bm, sw, sb)
        return mean, var

    @staticmethod
    @no_autocast_backward
    def backward(ctx: Any, g_m: torch.Tensor, g_v: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        has_bm, has_sb, from_rho, act = ctx.cfg
        saved = ctx.saved_tensors
        mu_h, var_h, wm, wv, wm2, s1, bv, out_w, out_b = saved[:9]
        act_saved = saved[9:ctx.n_saved]
        if torch.is_grad_enabled():  # create_graph: the VJP of the plain form, every order
            bm, sw, sb = saved[ctx.n_saved:]
            need = ctx.needs_input_grad
            return recompute_vjp(_clt_plain, (mu_h, var_h, wm, bm, sw, sb, *ctx.plain_args),
                                 (*need[:6], False, False), (g_m, g_v))
        if act is not None:  # through the activation first (RELU-6); g_m, g_v become dL/dm, dL/dv
            m, v, sd, aux, aux_n = act_saved
            if act == "relu":
                g_m, g_v = gauss.backward_raw(g_m, g_v, m, sd, v, aux)
            else:
                o = m.shape[-1]
                gm_p, gv_p = gauss.backward_raw(g_m[:, :o], g_v[:, :o], m, sd, v, aux)
                gm_n, gv_n = gauss.backward_raw(g_m[:, o:], g_v[:, o:], -m, sd, v, aux_n)
                g_m, g_v = gm_p.sub_(gm_n), gv_p.add_(gv_n)
        need = ctx.needs_input_grad
        g_mu = g_var = g_wm = g_bm = g_sw = g_sb = None
        if need[0] or need[1]:
            g1 = torch.mm(g_v, wv)
            if need[0]:
                g_mu = torch.mm(g_m, wm).addcmul_(mu_h, g1, value=2.0)
            if need[1] and var_h is not None:
                g_var = g1.addmm_(g_v, wm2)  # g1 is not needed after this
        if need[2]:
            if var_h is not None:
                g_wm = torch.mm(g_v.t(), var_h).mul_(wm).addmm_(g_m.t(), mu_h, beta=2.0)
            else:
                g_wm = torch.mm(g_m.t(), mu_h)
        if need[3] and has_bm:
            g_bm = g_m.sum(0)
        if need[4]:
            if from_rho:  # d sigma^2/d rho = 2 sigma^2: the 2 rides on the product
                g_sw = torch.addmm(wv, g_v.t(), s1, beta=0.0, alpha=2.0).mul_(wv)
                if out_w is not None:
                    g_sw.masked_fill_(out_w, 0.0)
            else:
                g_sw = torch.mm(g_v.t(), s1)
        if need[5] and has_sb:
            g_sb = g_v.sum(0)
            if from_rho:
                g_sb = g_sb.mul_(bv).mul_(2.0)
                if out_b is not None:
                    g_sb.masked_fill_(out_b, 0.0)
        return g_mu, g_var, g_wm, g_bm, g_sw, g_sb, None, None


# ---- the functional entries -------------------------------------------------------------------------------------


def fresh_noise(slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """New standard normal noise on every call (a :data:`Noise`)."""
    return torch.randn(shape, dtype=dtype, device=device)


class SampleConfig(NamedTuple):
    """Everything about one BBB or LR call but the tensors: ``use_softplus``, ``sigma = softplus(rho)`` instead of
    ``exp(rho)``; ``map``, the posterior mean's forward only (C4)."""

    use_softplus: bool = False
    map: bool = False


class MomentConfig(NamedTuple):
    """Everything about one CLT call but the tensors: ``use_softplus`` and ``map`` as :class:`SampleConfig`;
    ``act`` the activation whose moments are returned, none when ``is_output``; ``is_input``, a deterministic
    input (``var_h`` None) is allowed outside MAP mode; ``layer``, the name errors are reported under."""

    use_softplus: bool = False
    map: bool = False
    act: Act = "relu"
    is_input: bool = False
    is_output: bool = False
    layer: str = "CLTLinear"


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a layer computes in under autocast: float32, or its parameters' dtype when wider. (Not
    ``_validation.compute_dtype``, which keeps every dtype but float16 and bfloat16.)"""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype on ``t``'s device, None when autocast is off there. cpu and cuda only (not
    ``_dispatch.autocast_dtype``, which also answers for xpu, mps, hpu and other autocast devices)."""
    dev = t.device.type
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return None
    return torch.get_autocast_dtype(dev)


def _sampled(form: Callable[..., torch.Tensor], mean: Callable[..., torch.Tensor], entry: str, input: torch.Tensor,
             wm: torch.Tensor, bm: torch.Tensor | None, rho_w: torch.Tensor | None, rho_b: torch.Tensor | None,
             cfg: Any, noise: Noise) -> torch.Tensor:
    """A sampling entry: MAP mode's ``mean(input, wm, bm, cfg)``, the layer's map with the means (C4), else ``form``
    with the posterior's std; under the layers' autocast policy (with autocast on, the input is cast to the compute
    dtype, the call runs with autocast off, and the result is cast to the autocast dtype)."""
    ac = _autocast_dtype(input)
    if ac is None:
        if cfg.map:
            return mean(input, wm, bm, cfg)
        return form(input, wm, bm, _need_rho(rho_w, entry), rho_b, cfg, noise)
    with torch.autocast(input.device.type, enabled=False):
        x = input.to(_compute_dtype(wm.dtype))
        return _sampled(form, mean, entry, x, wm, bm, rho_w, rho_b, cfg, noise).to(ac)


def _linear(input: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, cfg: Any) -> torch.Tensor:
    return F.linear(input, w, b)


Moments = tuple[torch.Tensor, torch.Tensor | None]


def _moments(form: Callable[..., Moments], mu_h: torch.Tensor, var_h: torch.Tensor | None, weight_mu: torch.Tensor,
             *rest: Any) -> Moments:
    """``form(mu_h, var_h, weight_mu, *rest)`` under the layers' autocast policy, as :func:`_sampled`, for a mean
    and an optional variance in and out."""
    ac = _autocast_dtype(mu_h)
    if ac is None:
        return form(mu_h, var_h, weight_mu, *rest)
    cd = _compute_dtype(weight_mu.dtype)
    with torch.autocast(mu_h.device.type, enabled=False):
        m, v = form(mu_h.to(cd), None if var_h is None else var_h.to(cd), weight_mu, *rest)
        return m.to(ac), (None if v is None else v.to(ac))


def _need_rho(rho: torch.Tensor | None, entry: str) -> torch.Tensor:
    if rho is None:
        raise ValueError(f"{entry} samples from the posterior and needs weight_rho; got None")
    return rho


def bbb_linear(input: torch.Tensor, weight_mu: torch.Tensor, bias_mu: torch.Tensor | None,
               weight_rho: torch.Tensor | None, bias_rho: torch.Tensor | None,
               config: SampleConfig, noise: Noise = fresh_noise) -> torch.Tensor:
    r"""Bayes by Backprop: ``F.linear(x, mu + sigma eps, mu_b + sigma_b eps_b)`` with one weight sample
    (``noise("weight", ...)``, ``noise("bias", ...)``) shared by the batch (C5, C6); MAP mode ``F.linear(x, mu,
    mu_b)`` (C4). Without softplus the sample is one node (:class:`BBBSample`) where it may run."""
    return _sampled(_bbb, _linear, "bbb_linear", input, weight_mu, bias_mu, weight_rho, bias_rho, config, noise)


def _one_node(input: torch.Tensor, wm: torch.Tensor, bm: torch.Tensor | None, rho_w: torch.Tensor,
              rho_b: torch.Tensor | None, cfg: SampleConfig) -> bool:
    """The sample may be one node (:class:`BBBSample`, :class:`LRSample`): exp parameterization, an input whose last
    dimension is the weight's, and nothing that rules the custom Functions out (``eager_nodes_ok``)."""
    return (not cfg.use_softplus and input.dim() >= 1 and input.shape[-1] == wm.shape[-1]
            and eager_nodes_ok(input, wm, bm, rho_w, rho_b))


def _bbb(input: torch.Tensor, wm: torch.Tensor, bm: torch.Tensor | None, rho_w: torch.Tensor,
         rho_b: torch.Tensor | None, cfg: SampleConfig, noise: Noise) -> torch.Tensor:
    if _one_node(input, wm, bm, rho_w, rho_b, cfg):
        # One node for the whole sample (BBBSample), the same values as the form below.
        lo, hi = std_bounds(rho_w.dtype)
        eps_w = noise("weight", tuple(wm.shape), wm.dtype, wm.device)
        eps_b = noise("bias", tuple(bm.shape), bm.dtype, bm.device) if bm is not None else None
        x2 = input if input.dim() == 2 else input.reshape(-1, wm.shape[-1])
        y: torch.Tensor = BBBSample.apply(x2, wm, rho_w, eps_w, bm, rho_b, eps_b,  # type: ignore[no-untyped-call]
                                           math.log(lo), math.log(hi))
        return y if input.dim() == 2 else y.reshape(*input.shape[:-1], wm.shape[0])
    ws = posterior_std(rho_w, cfg.use_softplus)
    w = torch.addcmul(wm, ws, noise("weight", tuple(wm.shape), wm.dtype, wm.device))
    b = None
    if bm is not None and rho_b is not None:
        eps_b = noise("bias", tuple(bm.shape), bm.dtype, bm.device)
        b = torch.addcmul(bm, posterior_std(rho_b, cfg.use_softplus), eps_b)
    return F.linear(input, w, b)


def lr_linear(input: torch.Tensor, weight_mu: torch.Tensor, bias_mu: torch.Tensor | None,
              weight_rho: torch.Tensor | None, bias_rho: torch.Tensor | None,
              config: SampleConfig, noise: Noise = fresh_noise) -> torch.Tensor:
    r"""Local reparameterization: ``x mu^T + mu_b + sqrt(x^2 (sigma^2)^T + sigma_b^2) eps`` with ``eps`` of the
    output's shape (``noise("weight", ...)``; C2, C6); MAP mode ``F.linear(x, mu, mu_b)`` (C4). Without softplus
    the sample is one node (:class:`LRSample`) where it may run."""
    return _sampled(_lr, _linear, "lr_linear", input, weight_mu, bias_mu, weight_rho, bias_rho, config, noise)


def _lr(input: torch.Tensor, wm: torch.Tensor, bm: torch.Tensor | None, rho_w: torch.Tensor,
        rho_b: torch.Tensor | None, cfg: SampleConfig, noise: Noise) -> torch.Tensor:
    if _one_node(input, wm, bm, rho_w, rho_b, cfg):
        # One node for the whole sample (LRSample), the same values as the form below.
        out_shape = (*input.shape[:-1], wm.shape[0])
        eps = noise("weight", out_shape, wm.dtype, wm.device)
        lo, hi = std_bounds(rho_w.dtype)
        two_d = input.dim() == 2
        y: torch.Tensor = LRSample.apply(  # type: ignore[no-untyped-call]
            input if two_d else input.reshape(-1, wm.shape[-1]), wm, bm, rho_w, rho_b,
            eps if two_d else eps.reshape(-1, wm.shape[0]), math.log(lo), math.log(hi))
        return y if two_d else y.reshape(out_shape)
    out_mu = F.linear(input, wm, bm)
    wv = posterior_std(rho_w, cfg.use_softplus, square=True)
    bv = posterior_std(rho_b, cfg.use_softplus, square=True) if rho_b is not None else None
    out_std = safe_sqrt(F.linear(input.square(), wv, bv))
    return torch.addcmul(out_mu, out_std, noise("weight", tuple(out_mu.shape), out_mu.dtype, out_mu.device))


def _activate_map(m: torch.Tensor, cfg: MomentConfig) -> torch.Tensor:
    if cfg.is_output:
        return m
    if cfg.act == "relu":
        return F.relu(m)
    return torch.cat([F.relu(m), F.relu(-m)], dim=-1)


def _activate(m: torch.Tensor, v: torch.Tensor, cfg: MomentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.is_output:
        return m, v
    s = safe_sqrt(v)
    return relu_moments(m, s) if cfg.act == "relu" else crelu_moments(m, s)


def _check_map(var_h: torch.Tensor | None, cfg: MomentConfig | ConvConfig) -> None:
    if cfg.map and var_h is not None:
        raise ValueError(f"{cfg.layer}: var_h must be None in MAP mode (the MAP forward is deterministic), got a "
                         "tensor")


def clt_linear(mu_h: torch.Tensor, var_h: torch.Tensor | None, weight_mu: torch.Tensor, bias_mu: torch.Tensor | None,
               weight_rho: torch.Tensor | None, bias_rho: torch.Tensor | None,
               config: MomentConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""CLT moment propagation: the pre-activation's exact moments (C3)
    ``m = mu_h mu^T + mu_b``, ``v = (v_h + mu_h^2)(sigma^2)^T + v_h (mu^2)^T + sigma_b^2`` (``var_h`` None: a
    deterministic input, ``config.is_input``), then unless ``config.is_output`` the activation's moments of
    ``N(m, v)``; MAP mode ``(act(F.linear(mu_h, mu, mu_b)), None)`` with ``var_h`` None. The moments (and, float32
    on CPU, the activation: RELU-6) are one node (:class:`CLTPreact`) where it may run."""
    return _moments(_clt, mu_h, var_h, weight_mu, bias_mu, weight_rho, bias_rho, config)


def _clt(mu_h: torch.Tensor, var_h: torch.Tensor | None, wm: torch.Tensor, bm: torch.Tensor | None,
         rho_w: torch.Tensor | None, rho_b: torch.Tensor | None,
         cfg: MomentConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    _check_map(var_h, cfg)
    if cfg.map:
        return _activate_map(F.linear(mu_h, wm, bm), cfg), None
    if var_h is None and not cfg.is_input:
        raise ValueError(f"{cfg.layer}: var_h is required for a non-input layer outside MAP mode "
                         "(set is_input=True for a deterministic input)")
    rho_w = _need_rho(rho_w, "clt_linear")
    if (mu_h.dim() >= 1 and mu_h.shape[-1] == wm.shape[-1] and (var_h is None or var_h.shape == mu_h.shape)
            and eager_nodes_ok(mu_h, var_h, wm, bm, rho_w, rho_b)):
        # One autograd node for the pre-activation, with the std's exp(clamp(rho))**2 inside it (the same
        # values as posterior_std), or posterior_std itself under softplus.
        bounds: tuple[float, float] | None = None
        sw: torch.Tensor = rho_w
        sb: torch.Tensor | None = rho_b
        if cfg.use_softplus:
            sw = posterior_std(rho_w, True, square=True)
            sb = posterior_std(rho_b, True, square=True) if rho_b is not None else None
        else:
            lo, hi = std_bounds(rho_w.dtype)
            bounds = (math.log(lo), math.log(hi))
        two_d = mu_h.dim() == 2
        mu2 = mu_h if two_d else mu_h.reshape(-1, wm.shape[-1])
        var2 = var_h if two_d or var_h is None else var_h.reshape(-1, wm.shape[-1])
        # The activation joins the node where the fused float32 kernel applies (RELU-6).
        act = None if cfg.is_output or not gauss.usable(mu2, wm) else cfg.act
        m, v = CLTPreact.apply(mu2, var2, wm, bm, sw, sb, bounds, act)  # type: ignore[no-untyped-call]
        if not two_d:
            lead = tuple(mu_h.shape[:-1])
            m, v = m.reshape(*lead, m.shape[-1]), v.reshape(*lead, v.shape[-1])
        if act is not None:
            return m, v
    else:
        wv = posterior_std(rho_w, cfg.use_softplus, square=True)
        bv = posterior_std(rho_b, cfg.use_softplus, square=True) if rho_b is not None else None
        m = F.linear(mu_h, wm, bm)
        if var_h is None:
            v = F.linear(mu_h.square(), wv, bv)
        else:
            v = F.linear(var_h + mu_h.square(), wv, bv) + F.linear(var_h, wm.square())
    return _activate(m, v, cfg)


def clt_linear_det(mu_h: torch.Tensor, var_h: torch.Tensor | None, weight_mu: torch.Tensor,
                   bias_mu: torch.Tensor | None, config: MomentConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""CLT propagation through deterministic weights: ``m = mu_h mu^T + mu_b``, ``v = v_h (mu^2)^T``, then the
    activation's moments as :func:`clt_linear`; ``var_h`` None (or MAP mode): ``(act(m), None)``."""
    return _moments(_clt_det, mu_h, var_h, weight_mu, bias_mu, config)


def _clt_det(mu_h: torch.Tensor, var_h: torch.Tensor | None, wm: torch.Tensor, bm: torch.Tensor | None,
             cfg: MomentConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    _check_map(var_h, cfg)
    m = F.linear(mu_h, wm, bm)
    if cfg.map or var_h is None:
        return _activate_map(m, cfg), None
    return _activate(m, F.linear(var_h, wm.square()), cfg)


# ---- the conv entries -------------------------------------------------------------------------------------------


class ConvConfig(NamedTuple):
    """Everything about one Bayesian conv call but the tensors: ``use_softplus``, ``map``, ``act``, ``is_input``,
    ``is_output`` and ``layer`` as :class:`SampleConfig` and :class:`MomentConfig` (the last four for
    :func:`clt_conv2d` only); the convolution's ``stride``, ``padding`` (a pair, or "same" or "valid"),
    ``dilation``, ``groups`` and ``padding_mode`` as ``nn.Conv2d`` takes them, and ``pad``, the ``F.pad`` amounts
    (left, right, top, bottom) a mode other than "zeros" pads the input with first."""

    use_softplus: bool = False
    map: bool = False
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | str = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    padding_mode: str = "zeros"
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    act: Act = "relu"
    is_input: bool = False
    is_output: bool = False
    layer: str = "CLTConv2d"


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, cfg: ConvConfig) -> torch.Tensor:
    """``nn.Conv2d``'s map with weight ``w`` and bias ``b``."""
    if cfg.padding_mode == "zeros":
        return F.conv2d(x, w, b, cfg.stride, cfg.padding, cfg.dilation, cfg.groups)
    return F.conv2d(F.pad(x, cfg.pad, mode=cfg.padding_mode), w, b, cfg.stride, 0, cfg.dilation, cfg.groups)


def _check_conv_input(x: torch.Tensor, entry: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{entry}: the input must be a floating-point tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dim() not in (3, 4):
        raise ValueError(f"{entry}: the input must be (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")


def bbb_conv2d(input: torch.Tensor, weight_mu: torch.Tensor, bias_mu: torch.Tensor | None,
               weight_rho: torch.Tensor | None, bias_rho: torch.Tensor | None, config: ConvConfig,
               noise: Noise = fresh_noise) -> torch.Tensor:
    r"""Bayes by Backprop for a convolution: ``conv(x, mu + sigma eps, mu_b + sigma_b eps_b)`` with one kernel sample
    shared by the batch (C5, C6, CV1); MAP mode ``conv(x, mu, mu_b)`` (C4)."""
    _check_conv_input(input, "bbb_conv2d")
    return _sampled(_bbb_conv, _conv, "bbb_conv2d", input, weight_mu, bias_mu, weight_rho, bias_rho, config, noise)


def _bbb_conv(input: torch.Tensor, wm: torch.Tensor, bm: torch.Tensor | None, rho_w: torch.Tensor,
              rho_b: torch.Tensor | None, cfg: ConvConfig, noise: Noise) -> torch.Tensor:
    w = torch.addcmul(wm, posterior_std(rho_w, cfg.use_softplus), noise("weight", tuple(wm.shape), wm.dtype, wm.device))
    b = None
    if bm is not None and rho_b is not None:
        eps_b = noise("bias", tuple(bm.shape), bm.dtype, bm.device)
        b = torch.addcmul(bm, posterior_std(rho_b, cfg.use_softplus), eps_b)
    return _conv(input, w, b, cfg)


def lr_conv2d(input: torch.Tensor, weight_mu: torch.Tensor, bias_mu: torch.Tensor | None,
              weight_rho: torch.Tensor | None, bias_rho: torch.Tensor | None, config: ConvConfig,
              noise: Noise = fresh_noise) -> torch.Tensor:
    r"""Local reparameterization for a convolution: ``conv(x, mu) + mu_b + sqrt(conv(x^2, sigma^2) + sigma_b^2) eps``
    with ``eps`` of the output's shape (CV1, C6); MAP mode ``conv(x, mu, mu_b)`` (C4). The variance needs a second
    convolution, of ``x^2`` with ``sigma^2``."""
    _check_conv_input(input, "lr_conv2d")
    return _sampled(_lr_conv, _conv, "lr_conv2d", input, weight_mu, bias_mu, weight_rho, bias_rho, config, noise)


def _lr_conv(input: torch.Tensor, wm: torch.Tensor, bm: torch.Tensor | None, rho_w: torch.Tensor,
             rho_b: torch.Tensor | None, cfg: ConvConfig, noise: Noise) -> torch.Tensor:
    out_mu = _conv(input, wm, bm, cfg)
    wv = posterior_std(rho_w, cfg.use_softplus, square=True)
    bv = posterior_std(rho_b, cfg.use_softplus, square=True) if rho_b is not None else None
    out_std = safe_sqrt_plain(_conv(input * input, wv, bv, cfg))[0]
    return torch.addcmul(out_mu, out_std, noise("weight", tuple(out_mu.shape), out_mu.dtype, out_mu.device))


def _channel_act(m: torch.Tensor, cfg: ConvConfig) -> torch.Tensor:
    if cfg.is_output:
        return m
    if cfg.act == "relu":
        return F.relu(m)
    return torch.cat([F.relu(m), F.relu(-m)], dim=-3)


def clt_conv2d(mu_h: torch.Tensor, var_h: torch.Tensor | None, weight_mu: torch.Tensor, bias_mu: torch.Tensor | None,
               weight_rho: torch.Tensor | None, bias_rho: torch.Tensor | None, config: ConvConfig) -> Moments:
    r"""CLT moment propagation through a convolution (CV2): ``m = conv(mu_h, mu) + mu_b``,
    ``v = conv(v_h + mu_h^2, sigma^2) + conv(v_h, mu^2) + sigma_b^2``, then unless ``config.is_output`` the
    moments of the activation of ``N(m, v)`` (CReLU doubles the channels); MAP mode ``(act(conv(mu_h, mu, mu_b)),
    None)``."""
    _check_conv_input(mu_h, "clt_conv2d")
    return _moments(_clt_conv, mu_h, var_h, weight_mu, bias_mu, weight_rho, bias_rho, config)


def _clt_conv(mu_h: torch.Tensor, var_h: torch.Tensor | None, wm: torch.Tensor, bm: torch.Tensor | None,
              rho_w: torch.Tensor | None, rho_b: torch.Tensor | None, cfg: ConvConfig) -> Moments:
    _check_map(var_h, cfg)
    if cfg.map:
        return _channel_act(_conv(mu_h, wm, bm, cfg), cfg), None
    if var_h is None and not cfg.is_input:
        raise ValueError(f"{cfg.layer}: var_h is required for a non-input layer outside MAP mode "
                         "(set is_input=True for a deterministic input)")
    rho_w = _need_rho(rho_w, "clt_conv2d")
    wv = posterior_std(rho_w, cfg.use_softplus, square=True)
    bv = posterior_std(rho_b, cfg.use_softplus, square=True) if rho_b is not None else None
    m = _conv(mu_h, wm, bm, cfg)
    if var_h is None:
        v = _conv(mu_h * mu_h, wv, bv, cfg)
    else:
        v = _conv(var_h + mu_h * mu_h, wv, bv, cfg) + _conv(var_h, wm * wm, None, cfg)
    if cfg.is_output:
        return m, v
    s = safe_sqrt(v)
    if cfg.act == "relu":
        return relu_moments(m, s)
    mean_p, var_p = relu_moments(m, s)
    mean_n, var_n = neg_relu_moments(m, s)
    return torch.cat([mean_p, mean_n], dim=-3), torch.cat([var_p, var_n], dim=-3)


__all__ = ["Act", "BBBSample", "CLTPreact", "ConvConfig", "LRSample", "MomentConfig", "Noise", "SampleConfig",
           "bbb_conv2d", "bbb_linear", "clt_conv2d", "clt_linear", "clt_linear_det", "fresh_noise", "lr_conv2d",
           "lr_linear"]
