"""Bayesian linear layers with ObjectRL's API: BBB, local reparameterization, CLT moment propagation.

Theorems C1-C6 in ``proofs/bayesian_linear.md``. Every defect of the public implementation that the
issue lists is fixed here and pinned by ``tests/test_objectrl_regressions.py``.

Speed (issue 5): each layer's sample or moments is one autograd node with a hand-written backward
(``_BBBSample``, ``_LRSample``, ``_CLTPreact``), which forms the same values as the ``F.linear`` forms and
each product the gradients need once; float32 on CPU, the std's exp (EXP-1) and the CLT activation (RELU-6)
run the fused kernel of ``_native/gauss.py``. Under ``torch.func`` the plain autograd forms run; under
``torch.compile``/``torch.export``/``torch.jit.trace`` the plain forms with the kernels as ``torch.library`` operators.
Every hand-written backward, asked for a graph (``create_graph=True``), returns the VJP of the plain forms instead
(``_dispatch.recompute_vjp``), so second and higher derivatives are right.
float32 on CUDA takes the compile path in eager mode too: the plain forms with the kernels as operators, whose CUDA
kernels (``gauss.exp_clamp_cuda``, ``relu_moments_cuda``) are eager torch, so CUDA eager, compile and
autocast run one code path.

Autocast: each layer computes in float32 (or its parameters' wider dtype) with autocast disabled inside, and
returns the autocast dtype, as ``nn.Linear`` does.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rln_verified._dispatch import onnx_exporting, recompute_vjp, recording
from rln_verified._gaussian import (
    crelu_moments,
    kl_normal,
    neg_relu_moments,
    normal_cdf,
    normal_pdf,
    relu_moments,
)
from rln_verified._native import gauss
from rln_verified._special import inv_softplus, softplus

#: Initial posterior std of every weight and bias (ObjectRL's choice, rho = -4.6 there).
INIT_STD = 0.01

Prior = int | float | torch.Tensor | None
LayerType = Literal["bbb", "lr", "clt", "cltdet"]
Act = Literal["relu", "crelu"]


def std_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """The range ``[tiny**(1/4), max**(1/8)]`` the posterior std is kept in (C6).

    Below: ``sigma**2 >= sqrt(tiny)``, so the variance and its products with inputs of size >= tiny**(1/4)
    stay normal. Above: ``sigma**2 <= max**(1/4)``, so ``x**2 sigma**2`` summed over a layer stays finite
    for ``|x| <= max**(1/4) / sqrt(fan_in)``, and the KL's ``t = (sigma/s)**2 - 1`` keeps ``t**2`` finite
    for every prior std ``s >= max**(-1/8)``. float32: ``[3.3e-10, 6.5e4]``; float64: ``[1.2e-77, 3.4e38]``.
    float16 and bfloat16 use the float32 range (their std is computed in float32 and cast back).
    """
    fi = torch.finfo(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    return float(fi.tiny) ** 0.25, float(fi.max) ** 0.125


#: Below this many elements the plain autograd forms cost less than a custom Function's call overhead.
_FUSE_MIN = 4096


def _safe_sqrt(var: torch.Tensor) -> torch.Tensor:
    """sqrt with a finite gradient at 0 (C6).

    ``clamp_min(tiny)`` moves only inputs below the smallest normal ``tiny``, by at most
    ``sqrt(tiny)`` in the result (1.1e-19 in float32, 1.5e-154 in float64), far below any std the
    layers produce. Below ``tiny`` the gradient is 0, the true derivative of the std of a variance
    that is identically 0 (at a zero input, d sqrt(sum x_j^2 s_j^2)/d rho = 0); at ``tiny`` it is
    ``1/(2 sqrt(tiny))``, finite.
    """
    if var.numel() >= _FUSE_MIN and _plain(var):
        out: torch.Tensor = _SafeSqrt.apply(var)  # type: ignore[no-untyped-call]
        return out
    return torch.sqrt(var.clamp_min(torch.finfo(var.dtype).tiny))


def _safe_sqrt_plain(var: torch.Tensor) -> tuple[torch.Tensor]:
    return (torch.sqrt(var.clamp_min(torch.finfo(var.dtype).tiny)),)


def _std_plain(rho: torch.Tensor | None, lo: float, hi: float, square: bool) -> torch.Tensor | None:
    return None if rho is None else gauss.exp_clamp_plain(rho, lo, hi, square)


def _bbb_plain(x: torch.Tensor, wm: torch.Tensor, rho_w: torch.Tensor, eps_w: torch.Tensor, bm: torch.Tensor | None,
               rho_b: torch.Tensor | None, eps_b: torch.Tensor | None, lo: float, hi: float) -> tuple[torch.Tensor]:
    """_BBBSample's values in plain torch (the recomputed VJP's formula)."""
    w = torch.addcmul(wm, torch.exp(rho_w.clamp(lo, hi)), eps_w)
    b = None
    if bm is not None and rho_b is not None and eps_b is not None:
        b = torch.addcmul(bm, torch.exp(rho_b.clamp(lo, hi)), eps_b)
    return (F.linear(x, w, b),)


def _lr_plain(x: torch.Tensor, wm: torch.Tensor, bm: torch.Tensor | None, rho_w: torch.Tensor,
              rho_b: torch.Tensor | None, eps: torch.Tensor, lo: float, hi: float) -> tuple[torch.Tensor]:
    """_LRSample's values in plain torch."""
    m = F.linear(x, wm, bm)
    v = F.linear(x * x, gauss.exp_clamp_plain(rho_w, lo, hi, True), _std_plain(rho_b, lo, hi, True))
    return (torch.addcmul(m, _safe_sqrt_plain(v)[0], eps),)


def _clt_plain(mu_h: torch.Tensor, var_h: torch.Tensor | None, wm: torch.Tensor, bm: torch.Tensor | None,
               sw: torch.Tensor, sb: torch.Tensor | None, rho_bounds: tuple[float, float] | None,
               act: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """_CLTPreact's values in plain torch (C3, and the activation's moments from RELU-1's plain forms)."""
    if rho_bounds is not None:
        wv = gauss.exp_clamp_plain(sw, *rho_bounds, True)
        bv = _std_plain(sb, *rho_bounds, True)
    else:
        wv, bv = sw, sb
    m = F.linear(mu_h, wm, bm)
    if var_h is None:
        v = F.linear(mu_h * mu_h, wv, bv)
    else:
        v = F.linear(var_h + mu_h * mu_h, wv, bv) + F.linear(var_h, wm * wm)
    if act is None:
        return m, v
    s = _safe_sqrt_plain(v)[0]
    mean, var = gauss.relu_moments_plain(m, s)
    if act == "crelu":
        mean_n, var_n = gauss.relu_moments_plain(-m, s)
        mean, var = torch.cat([mean, mean_n], dim=-1), torch.cat([var, var_n], dim=-1)
    return mean, var


_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_interpreters = torch._C._functorch.peek_interpreter_stack


def _plain(*tensors: torch.Tensor | None) -> bool:
    """Nothing records the call (compile, export, jit.trace), no torch.func transform is active and the first tensor
    is not float32 CUDA: the custom autograd Functions below may be used. float32 CUDA takes the path compile takes
    (plain forms with the kernels as operators, whose CUDA kernels are eager torch), in eager mode too."""
    if recording() or _interpreters() is not None:
        return False
    t0 = tensors[0]
    if t0 is not None and t0.is_cuda and t0.dtype == torch.float32:  # the operator path, as under compile
        return False
    for t in tensors:  # a loop, not any(...): this runs on every layer call  # noqa: SIM110
        if t is not None and _wrapped(t):
            return False
    return True


def _no_autocast_backward(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A custom backward runs in the dtype its forward ran in: a ``.backward()`` called inside an autocast block
    would otherwise recast its matmuls to the autocast dtype (one cheap check when autocast is off)."""
    @functools.wraps(fn)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        g = next((t for t in grads if t is not None), None)
        dev = g.device.type if g is not None else "cpu"
        if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
            with torch.autocast(dev, enabled=False):
                return fn(ctx, *grads)
        return fn(ctx, *grads)

    return wrapper


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a layer computes in under autocast: float32, or its parameters' dtype when wider."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    dev = t.device.type
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return None
    return torch.get_autocast_dtype(dev)


def _inside(t: torch.Tensor, lo: float, hi: float) -> bool:
    """True when ``t`` is on the CPU and every element lies in ``[lo, hi]`` (no NaN), so a clamp to that range is the
    identity: one read-only pass (on CPU the answer costs no device synchronisation)."""
    if t.device.type != "cpu" or t.numel() == 0:
        return False
    if hi == math.inf:
        return lo <= float(torch.amin(t))  # False for a NaN
    t_lo, t_hi = torch.aminmax(t)
    return lo <= float(t_lo) and float(t_hi) <= hi


def _squared_std(rho: torch.Tensor, lo: float, hi: float, square: bool = True,
                 w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``exp(clamp(rho, lo, hi))`` (squared when ``square``), bit for bit ``_std_of(rho)`` (``.square()``); the mask
    of the saturated or NaN elements, whose gradient is 0 as clamp's (C6), None when there is none; and ``w * w``
    when ``w`` is given (None otherwise).

    float32 on CPU: one pass of the fused kernel, whose exp (EXP-1) is then the std's exp everywhere (std(), var(),
    KL() and the layers' forward). Elsewhere torch's; on CPU a min/max pass first, so that the clamp, an identity
    where nothing is saturated, and its mask are skipped.
    """
    if gauss.usable(rho) and (w is None or (gauss.usable(w) and w.shape == rho.shape)):
        out, sat, w2 = gauss.exp_clamp(rho.contiguous(), lo, hi, square,
                                               w.contiguous() if w is not None else None)
        return out, (rho.clamp(lo, hi) != rho if sat else None), w2
    w2 = w * w if w is not None else None
    if _inside(rho, lo, hi):
        sd, mask = torch.exp(rho), None
    else:
        c = rho.clamp(lo, hi)
        mask = c != rho
        sd = c.exp_()
    return (sd.mul_(sd) if square else sd), mask, w2


class _ExpStd(torch.autograd.Function):
    """``sigma = exp(clamp(rho, lo, hi))`` or (``square``) ``sigma**2``, the values of the autograd form, with its
    gradient ``sigma`` (``2 sigma**2``) where ``lo <= rho <= hi`` and 0 elsewhere (C6): one pass forward and one
    backward where nothing is saturated, against clamp's two and four."""

    @staticmethod
    def forward(ctx: Any, rho: torch.Tensor, lo: float, hi: float, square: bool) -> torch.Tensor:
        out, mask, _ = _squared_std(rho, lo, hi, square)
        ctx.save_for_backward(out, mask, rho)
        ctx.square = square
        ctx.bounds = (lo, hi)
        return out

    @staticmethod
    @_no_autocast_backward
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        out, mask, rho = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the VJP of the plain form, every order
            lo, hi = ctx.bounds
            sq = ctx.square
            g_r = recompute_vjp(lambda r: (gauss.exp_clamp_plain(r, lo, hi, sq),), (rho,),
                                ctx.needs_input_grad[:1], (g,))[0]
            return g_r, None, None, None
        g_rho = g * out
        if ctx.square:
            g_rho = g_rho * 2.0
        if mask is not None:
            g_rho = g_rho.masked_fill(mask, 0.0)
        return g_rho, None, None, None


def _sqrt_and_mask(var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The values of :func:`_safe_sqrt` and the mask of clamped elements (None when nothing is below tiny, so the
    clamp pass is skipped)."""
    tiny = torch.finfo(var.dtype).tiny
    if _inside(var, tiny, math.inf):
        return torch.sqrt(var), None
    low = torch.ge(var, tiny).logical_not_()  # clamp_min's mask: NaN counts as below
    return torch.sqrt(var.clamp_min(tiny)), low


class _SafeSqrt(torch.autograd.Function):
    """:func:`_safe_sqrt` with the same values and gradients, skipping the clamp where no element is below tiny."""

    @staticmethod
    def forward(ctx: Any, var: torch.Tensor) -> torch.Tensor:
        s, low = _sqrt_and_mask(var)
        ctx.save_for_backward(s, low, var)
        return s

    @staticmethod
    @_no_autocast_backward
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor | None:
        s, low, var = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the VJP of the plain form, every order
            return recompute_vjp(_safe_sqrt_plain, (var,), ctx.needs_input_grad, (g,))[0]
        g_v: torch.Tensor = g / (2 * s)  # SqrtBackward's expression
        return g_v if low is None else g_v.masked_fill(low, 0.0)


class _BBBSample(torch.autograd.Function):
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
        sd_w, out_w, _ = _squared_std(rho_w, lo, hi, square=False)
        w = torch.addcmul(wm, sd_w, eps_w)
        b = sd_b = out_b = None
        if bm is not None and rho_b is not None and eps_b is not None:
            sd_b, out_b, _ = _squared_std(rho_b, lo, hi, square=False)
            b = torch.addcmul(bm, sd_b, eps_b)
        ctx.save_for_backward(x, w, sd_w, eps_w, out_w, sd_b, eps_b, out_b, wm, rho_w, bm, rho_b)
        ctx.bounds = (lo, hi)
        return torch.addmm(b, x, w.t()) if b is not None else torch.mm(x, w.t())

    @staticmethod
    @_no_autocast_backward
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


class _LRSample(torch.autograd.Function):
    r"""LRLinear's sample for a 2-D input in one autograd node (C2, C6):

    .. math:: y = x\mu_W^\top + \mu_b + \sqrt{\max(v, \mathrm{tiny})}\,\varepsilon,\qquad
              v = x^2 (\sigma_W^2)^\top + \sigma_b^2,\quad \sigma = \exp(\mathrm{clamp}(\rho, lo, hi)),

    the values of the autograd form (``F.linear``, :func:`_safe_sqrt`, ``addcmul``). Backward, with
    ``q = 2 dL/dv = g eps / s`` (0 where ``v < tiny``): ``dx = g mu_W + x (q sigma_W^2)``,
    ``dmu_W = g^T x``, ``drho_W = sigma_W^2 (q^T x^2)`` (0 where saturated), and the bias sums.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, wm: torch.Tensor, bm: torch.Tensor | None, rho_w: torch.Tensor,
                rho_b: torch.Tensor | None, eps: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        wv, out_w, _ = _squared_std(rho_w, lo, hi)
        bv, out_b, _ = _squared_std(rho_b, lo, hi) if rho_b is not None else (None, None, None)
        m = torch.addmm(bm, x, wm.t()) if bm is not None else torch.mm(x, wm.t())
        x2 = x * x
        v = torch.addmm(bv, x2, wv.t()) if bv is not None else torch.mm(x2, wv.t())
        s, low = _sqrt_and_mask(v)
        ctx.save_for_backward(x, wm, wv, bv, x2, s, eps, low, out_w, out_b, bm, rho_w, rho_b)
        ctx.bounds = (lo, hi)
        return torch.addcmul(m, s, eps)

    @staticmethod
    @_no_autocast_backward
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


class _CLTPreact(torch.autograd.Function):
    r"""The CLT pre-activation moments (C3) of a 2-D input with a hand-written backward, and optionally the
    activation's moments through the fused float32 kernel (RELU-6), all in one autograd node:

    .. math:: m = \mu_h\mu_W^\top + \mu_b,\qquad v = (v_h + \mu_h^2)(\sigma_W^2)^\top + v_h(\mu_W^2)^\top + \sigma_b^2,

    the same sums as the ``F.linear`` form, accumulated by two ``addmm`` (no full-size sum of two products). The
    backward forms each of the six products the gradients need once:
    ``dmu_h = g_m mu_W + 2 mu_h (g_v sigma_W^2)``, ``dv_h = g_v sigma_W^2 + g_v mu_W^2``,
    ``dmu_W = g_m^T mu_h + 2 mu_W (g_v^T v_h)``, ``dsigma_W^2 = g_v^T (v_h + mu_h^2)``, and the bias sums.
    ``var_h`` None: a deterministic input (``v_h = 0``).

    ``sw``, ``sb`` are the variances ``sigma^2``, or, with ``rho_bounds = (lo, hi)``, the ``rho`` of
    ``sigma = exp(clamp(rho, lo, hi))`` (:func:`_squared_std`); their gradient is then
    ``dsigma^2 2 sigma^2``, 0 where rho is saturated. ``act`` "relu" or "crelu" (float32 CPU only): the outputs
    are the activation's moments from ``(m, v)``, bit for bit those of ``relu_moments(m, _safe_sqrt(v))``.
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
            wv, out_w, wm2 = _squared_std(sw, *rho_bounds, w=wm if var_h is not None else None)
            bv, out_b, _ = _squared_std(sb, *rho_bounds) if sb is not None else (None, None, None)
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
        # _safe_sqrt(v) = sqrt(clamp_min(v, tiny)): the kernel takes torch's sqrt(v) and applies the clamp.
        sd = torch.sqrt(v)
        mean, var, aux = gauss.forward_raw(m, sd, v)
        aux_n = None
        if act == "crelu":
            mean_n, var_n, aux_n = gauss.forward_raw(-m, sd, v)
            mean, var = torch.cat([mean, mean_n], dim=-1), torch.cat([var, var_n], dim=-1)
        ctx.save_for_backward(mu_h, var_h, wm, wv, wm2, s1, bv, out_w, out_b, m, v, sd, aux, aux_n, bm, sw, sb)
        return mean, var

    @staticmethod
    @_no_autocast_backward
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


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _prior_number(value: Prior, name: str, default: float) -> float | None:
    """The prior as a checked python float (None for a tensor), before any tensor exists: a mean must be finite,
    a std finite and > 0."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise ValueError(f"{name} must be an int, a float or a tensor, got {type(value).__name__}")
    if isinstance(value, torch.Tensor):
        return None
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if name == "prior_std" and not v > 0:
        raise ValueError(f"prior_std must be > 0 and finite everywhere, got {v}")
    return v


def _prior_tensor(value: Prior, name: str, default: float, weight_shape: tuple[int, int],
                  factory_kwargs: dict[str, Any]) -> torch.Tensor:
    """An int, float, 0-d tensor, one-element tensor or weight-shaped tensor, as a buffer of shape
    ``(1,)`` or ``weight_shape``. Anything else raises a ``ValueError`` naming what arrived."""
    number = _prior_number(value, name, default)
    if number is not None:
        return torch.full((1,), number, **factory_kwargs)
    assert isinstance(value, torch.Tensor)
    if value.is_complex():
        raise ValueError(f"{name} must be a real tensor, got dtype {value.dtype}")
    t = value.detach().to(**{k: v for k, v in factory_kwargs.items() if v is not None})
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype() if factory_kwargs.get("dtype") is None else factory_kwargs["dtype"])
    if t.dim() == 0 or tuple(t.shape) == (1,) or (t.numel() == 1 and tuple(t.shape) == weight_shape):
        # One number (also a (1, 1) prior of a 1-to-1 layer): shared by the weights and the bias.
        return t.reshape(1).clone()
    if tuple(t.shape) == weight_shape:
        return t.clone()
    raise ValueError(
        f"{name} must be a scalar, a one-element tensor or weight-shaped {weight_shape}, got shape {tuple(t.shape)}"
    )


def _check_prior_values(mean: torch.Tensor, std: torch.Tensor) -> None:
    # Reads the data once, at construction or update_prior, never in forward. A meta tensor has no data: its check
    # is skipped (python-number priors were checked before any tensor existed; see BayesianLinear).
    if mean.is_meta or std.is_meta:
        return
    if not bool(torch.isfinite(mean).all()):
        raise ValueError("prior_mean must be finite")
    if not bool(((std > 0) & torch.isfinite(std)).all()):
        raise ValueError(f"prior_std must be > 0 and finite everywhere, got min {float(std.min())}")


def _check_features(in_features: object, out_features: object) -> None:
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        if not _is_int(v) or int(v) < 1:  # type: ignore[call-overload]
            raise ValueError(f"{name} must be a positive int, got {v!r}")


class BayesianLinear(nn.Module):
    r"""Base of the Bayesian linear layers (``forward`` raises NotImplementedError here; no ABC metaclass, so that
    FSDP2's ``fully_shard`` can derive its class from a layer's): a factorized Gaussian posterior over weights.

    .. math::
        W_{ij} \sim N(\mu_{ij}, \sigma_{ij}^2),\quad \sigma = e^{\rho}\ \text{or}\ \mathrm{softplus}(\rho),
        \qquad \mathrm{KL} = \sum_{ij} KL(N(\mu_{ij}, \sigma_{ij}^2)\,\|\,N(m_{ij}, s_{ij}^2)) + \text{bias terms}.

    ``sigma`` is kept in :func:`std_bounds` (``rho`` outside it is saturated, gradient 0), so it is > 0
    and finite for every finite ``rho`` (C6). The KL is a sum over all weights and biases; divide by the
    number of training points yourself for a minibatch ELBO (C1).

    Args:
        in_features, out_features: sizes (positive ints).
        bias: learn a bias posterior ``bias_mu``, ``bias_rho`` (registered as None when False).
        prior_mean, prior_std: int, float, 0-d or one-element tensor (shared by weights and biases),
            or a weight-shaped ``(out, in)`` tensor (the weights' prior; the biases then keep N(0, 1)).
            Default N(0, 1). ``prior_std <= 0`` raises ``ValueError``.
        use_softplus: ``sigma = softplus(rho)`` instead of ``exp(rho)``.
        manual_reset: keep the sampled noise from call to call until :meth:`reset_randomness` (C5).
        device, dtype: factory arguments.

    ``device="meta"``: the layer is built without data. Priors given as numbers (or the default) are checked as
    numbers and refilled by :meth:`reset_parameters`, so ``to_empty(device=...)`` then ``reset_parameters()`` gives
    a working layer. A tensor prior on meta cannot be checked (it has no values) and is not refilled: set it with
    :meth:`update_prior` after ``to_empty``.

    Raises:
        ValueError: bad sizes, a prior of the wrong shape, a non-positive or non-finite prior std.
    """

    in_features: int
    out_features: int
    _map: bool = False
    #: Subclasses without learned std (CLTLinearDet) set this False: rho is then registered as None.
    _learn_std: ClassVar[bool] = True

    weight_rho: nn.Parameter | None
    bias_mu: nn.Parameter | None
    bias_rho: nn.Parameter | None
    prior_mean: torch.Tensor
    prior_std: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        prior_mean: Prior = None,
        prior_std: Prior = None,
        use_softplus: bool = False,
        manual_reset: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        _check_features(in_features, out_features)
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.use_softplus = bool(use_softplus)
        self._manual_reset = bool(manual_reset)
        self._random_weight: torch.Tensor | None = None
        self._random_bias: torch.Tensor | None = None
        shape = (self.out_features, self.in_features)
        self.weight_mu = nn.Parameter(torch.empty(shape, **factory_kwargs))
        if self._learn_std:
            self.weight_rho = nn.Parameter(torch.empty(shape, **factory_kwargs))
        else:
            self.register_parameter("weight_rho", None)
        if bias:
            self.bias_mu = nn.Parameter(torch.empty(self.out_features, **factory_kwargs))
            if self._learn_std:
                self.bias_rho = nn.Parameter(torch.empty(self.out_features, **factory_kwargs))
            else:
                self.register_parameter("bias_rho", None)
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        pkw = {"device": self.weight_mu.device, "dtype": self.weight_mu.dtype}
        self._prior_fill = (_prior_number(prior_mean, "prior_mean", 0.0), _prior_number(prior_std, "prior_std", 1.0))
        pm = _prior_tensor(prior_mean, "prior_mean", 0.0, shape, pkw)
        ps = _prior_tensor(prior_std, "prior_std", 1.0, shape, pkw)
        _check_prior_values(pm, ps)
        self.register_buffer("prior_mean", pm)
        self.register_buffer("prior_std", ps)
        self.reset_parameters()

    # ---- configuration ----------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """ObjectRL's initialization: Kaiming-uniform weight means (``a = sqrt 5``, as ``nn.Linear``),
        bias means uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``, and ``rho`` set so that every std
        starts at exactly ``INIT_STD = 0.01`` (``log 0.01`` or ``inv_softplus(0.01)``)."""
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        rho0 = self._rho_of(INIT_STD)
        if self.weight_rho is not None:
            nn.init.constant_(self.weight_rho, rho0)
        if self.bias_mu is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias_mu, -bound, bound)
        if self.bias_rho is not None:
            nn.init.constant_(self.bias_rho, rho0)
        # Number priors are state too (after to_empty their buffers hold garbage); tensor priors are kept.
        fill_m, fill_s = getattr(self, "_prior_fill", (None, None))
        with torch.no_grad():
            if fill_m is not None and hasattr(self, "prior_mean"):
                self.prior_mean.fill_(fill_m)
            if fill_s is not None and hasattr(self, "prior_std"):
                self.prior_std.fill_(fill_s)
        self._random_weight = None
        self._random_bias = None

    def _rho_of(self, std: float) -> float:
        if self.use_softplus:
            return float(inv_softplus(torch.tensor(std, dtype=torch.float64)))
        return math.log(std)

    def reset_randomness(self) -> None:
        """Forget the stored noise: the next forward draws fresh noise (C5).

        Raises:
            ValueError: ``manual_reset`` is off (the noise is then fresh on every call anyway).
        """
        if not self._manual_reset:
            raise ValueError(f"{type(self).__name__}.reset_randomness needs manual_reset=True; "
                             "call set_manual_reset() first")
        self._random_weight = None
        self._random_bias = None

    def set_manual_reset(self, manual_reset: bool = True) -> None:
        self._manual_reset = bool(manual_reset)
        if not self._manual_reset:
            self._random_weight = None
            self._random_bias = None

    def get_manual_reset(self) -> bool:
        return self._manual_reset

    def map(self, on: bool = True) -> None:
        """Maximum a posteriori mode: forward uses the means only and is deterministic (C4)."""
        self._map = bool(on)

    def update_prior(self, prior_mean: Prior, prior_std: Prior) -> None:
        """Replace the prior (same accepted forms and checks as the constructor)."""
        shape = (self.out_features, self.in_features)
        pkw = {"device": self.weight_mu.device, "dtype": self.weight_mu.dtype}
        fill = (_prior_number(prior_mean, "prior_mean", 0.0), _prior_number(prior_std, "prior_std", 1.0))
        pm = _prior_tensor(prior_mean, "prior_mean", 0.0, shape, pkw)
        ps = _prior_tensor(prior_std, "prior_std", 1.0, shape, pkw)
        _check_prior_values(pm, ps)
        self._prior_fill = fill
        self.prior_mean = pm
        self.prior_std = ps

    softplus = staticmethod(softplus)
    inv_softplus = staticmethod(inv_softplus)

    # ---- posterior ------------------------------------------------------------------------------------

    def _std_of(self, rho: torch.Tensor, square: bool = False) -> torch.Tensor:
        lo, hi = std_bounds(rho.dtype)
        if self.use_softplus:
            r = rho.clamp(float(inv_softplus(torch.tensor(lo, dtype=torch.float64))), hi)
            sd = softplus(r)
            return sd.square() if square else sd
        # The same values, a shorter backward (_ExpStd); always where the fused kernel serves, whose exp is then
        # the std's exp for every use of this rho. Under compile/export/trace: the kernel as an operator.
        if recording():
            if not onnx_exporting() and rho.dtype == torch.float32 and (rho.is_cpu or rho.is_cuda):
                op_out: torch.Tensor = gauss.exp_clamp_op(rho, math.log(lo), math.log(hi), square)
                return op_out
        elif rho.is_cuda and rho.dtype == torch.float32 and _interpreters() is None and not _wrapped(rho):
            # float32 CUDA, eager: the operator, as under compile (its CUDA kernel is torch's exp)
            cuda_out: torch.Tensor = gauss.exp_clamp_op(rho, math.log(lo), math.log(hi), square)
            return cuda_out
        if _plain(rho) and (rho.numel() >= _FUSE_MIN or gauss.usable(rho)):
            out: torch.Tensor = _ExpStd.apply(rho, math.log(lo), math.log(hi), square)  # type: ignore[no-untyped-call]
            return out
        sd = torch.exp(rho.clamp(math.log(lo), math.log(hi)))
        return sd.square() if square else sd

    def mean(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight_mu, bias_mu)``."""
        return self.weight_mu, self.bias_mu

    def std(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(sigma_w, sigma_b)``, each ``exp(rho)`` or ``softplus(rho)`` inside :func:`std_bounds` (C6); float32 on
        CPU the exp is the fused kernel's, within 0.99 ulp (EXP-1)."""
        if self.weight_rho is None:
            raise ValueError(f"{type(self).__name__} has no learned standard deviation (weight_rho is None)")
        sb = self._std_of(self.bias_rho) if self.bias_rho is not None else None
        return self._std_of(self.weight_rho), sb

    def var(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(sigma_w**2, sigma_b**2)``, the squares of :meth:`std` bit for bit."""
        if self.weight_rho is None:
            raise ValueError(f"{type(self).__name__} has no learned standard deviation (weight_rho is None)")
        sb = self._std_of(self.bias_rho, square=True) if self.bias_rho is not None else None
        return self._std_of(self.weight_rho, square=True), sb

    def KL(self) -> tuple[torch.Tensor, int]:
        """``(sum of KL(posterior || prior) over weights and biases, number of weight and bias elements)`` (C1)."""
        wm, bm = self.mean()
        ws, bs = self.std()
        kl = kl_normal(wm, ws, self.prior_mean.expand_as(wm), self.prior_std.expand_as(wm)).sum()
        n = wm.numel()
        if bm is not None and bs is not None:
            if self.prior_mean.numel() == 1 and self.prior_std.numel() == 1:
                pm, ps = self.prior_mean.expand_as(bm), self.prior_std.expand_as(bm)
            else:  # a weight-shaped prior covers the weights only; biases keep N(0, 1)
                pm = self.prior_mean.new_zeros(bm.shape) if self.prior_mean.numel() != 1 \
                    else self.prior_mean.expand_as(bm)
                ps = self.prior_std.new_ones(bm.shape) if self.prior_std.numel() != 1 \
                    else self.prior_std.expand_as(bm)
            kl = kl + kl_normal(bm, bs, pm, ps).sum()
            n += bm.numel()
        return kl, n

    def _noise(self, attr: str, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``like``; kept between calls under manual_reset (C5)."""
        return self._noise_shaped(attr, tuple(like.shape), like.dtype, like.device)

    def _noise_shaped(self, attr: str, shape: tuple[int, ...], dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
        stored: torch.Tensor | None = getattr(self, attr)
        if self._manual_reset and stored is not None:
            if tuple(stored.shape) != shape and _interpreters() is not None:
                raise ValueError(
                    f"{type(self).__name__}: manual_reset keeps noise of shape {tuple(stored.shape)}, but under a "
                    f"torch.func transform (vmap over samples: per-sample gradients) each call needs {shape}, and "
                    "which stored row belongs to which sample is unknown; for per-sample gradients use "
                    "manual_reset=False (fresh noise per call), map mode, or vmap over a leading dimension that "
                    "keeps the batch shape"
                )
            if tuple(stored.shape) != shape:
                raise ValueError(
                    f"{type(self).__name__}: manual_reset keeps noise of shape {tuple(stored.shape)}, but this call "
                    f"needs {shape}; call reset_randomness() before changing the batch shape"
                )
            return stored
        eps = torch.randn(shape, dtype=dtype, device=device)
        if self._manual_reset:  # otherwise the slot stays None (reset_parameters, set_manual_reset(False))
            setattr(self, attr, eps)
        return eps

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}: BayesianLinear is a base class; use BBBLinear, LRLinear, "
                                  "CLTLinear or CLTLinearDet")

    def _upcast(self, t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        return None if t is None else t.to(dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias_mu is not None}, "
                f"use_softplus={self.use_softplus}, manual_reset={self._manual_reset}")


class BBBLinear(BayesianLinear):
    r"""Bayes by Backprop (Blundell et al., 2015): one weight sample per call, shared by the batch.

    .. math:: W = \mu + \sigma\odot\varepsilon,\ \varepsilon\sim N(0, I),\qquad y = x W^\top + b.

    The sample is one node (:class:`_BBBSample`, the values of ``F.linear(x, addcmul(mu, std(), eps), ...)``; C5,
    C6, EXP-1). MAP mode: ``F.linear(x, weight_mu, bias_mu)`` (C4).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        ac = _autocast_dtype(input)
        if ac is not None:  # autocast: compute in float32 with autocast off, return the autocast dtype
            cd = _compute_dtype(self.weight_mu.dtype)
            with torch.autocast(input.device.type, enabled=False):
                out: torch.Tensor = self._forward(input.to(cd))
            return out.to(ac)
        return self._forward(input)

    def _forward(self, input: torch.Tensor) -> torch.Tensor:
        wm, bm = self.mean()
        if self._map:
            return F.linear(input, wm, bm)
        rho_w, rho_b = self.weight_rho, self.bias_rho
        assert rho_w is not None
        if (not self.use_softplus and input.dim() >= 1 and input.shape[-1] == self.in_features
                and _plain(input, wm, bm, rho_w, rho_b)):
            # One node for the whole sample (_BBBSample), the same values as the form below.
            lo, hi = std_bounds(rho_w.dtype)
            eps_w = self._noise("_random_weight", wm)
            eps_b = self._noise("_random_bias", bm) if bm is not None else None
            x2 = input if input.dim() == 2 else input.reshape(-1, self.in_features)
            y: torch.Tensor = _BBBSample.apply(x2, wm, rho_w, eps_w, bm, rho_b, eps_b,  # type: ignore[no-untyped-call]
                                               math.log(lo), math.log(hi))
            return y if input.dim() == 2 else y.reshape(*input.shape[:-1], self.out_features)
        ws, bs = self.std()
        w = torch.addcmul(wm, ws, self._noise("_random_weight", wm))
        b = torch.addcmul(bm, bs, self._noise("_random_bias", bm)) if bm is not None and bs is not None else None
        return F.linear(input, w, b)


class LRLinear(BayesianLinear):
    r"""Local reparameterization (Kingma et al., 2015): samples the pre-activations.

    .. math:: y = x\mu^\top + \mu_b + \sqrt{x^2 (\sigma^2)^\top + \sigma_b^2}\odot\varepsilon,\ \varepsilon\sim N(0, I).

    Same output mean and variance as :class:`BBBLinear` for each output element (C2); independent
    noise per batch row. The square root has a finite gradient at zero variance (C6). The sample is one node
    (:class:`_LRSample`, the values of the ``F.linear`` form; EXP-1).
    MAP mode: ``F.linear(x, weight_mu, bias_mu)`` (C4).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        ac = _autocast_dtype(input)
        if ac is not None:  # autocast: compute in float32 with autocast off, return the autocast dtype
            cd = _compute_dtype(self.weight_mu.dtype)
            with torch.autocast(input.device.type, enabled=False):
                out: torch.Tensor = self._forward(input.to(cd))
            return out.to(ac)
        return self._forward(input)

    def _forward(self, input: torch.Tensor) -> torch.Tensor:
        wm, bm = self.mean()
        if self._map:
            return F.linear(input, wm, bm)
        rho_w, rho_b = self.weight_rho, self.bias_rho
        assert rho_w is not None
        if (not self.use_softplus and input.dim() >= 1 and input.shape[-1] == self.in_features
                and _plain(input, wm, bm, rho_w, rho_b)):
            # One node for the whole sample (_LRSample), the same values as the form below.
            out_shape = (*input.shape[:-1], self.out_features)
            eps = self._noise_shaped("_random_weight", out_shape, wm.dtype, wm.device)
            lo, hi = std_bounds(rho_w.dtype)
            two_d = input.dim() == 2
            y: torch.Tensor = _LRSample.apply(  # type: ignore[no-untyped-call]
                input if two_d else input.reshape(-1, self.in_features), wm, bm, rho_w, rho_b,
                eps if two_d else eps.reshape(-1, self.out_features), math.log(lo), math.log(hi))
            return y if two_d else y.reshape(out_shape)
        out_mu = F.linear(input, wm, bm)
        wv, bv = self.var()
        out_std = _safe_sqrt(F.linear(input.square(), wv, bv))
        return torch.addcmul(out_mu, out_std, self._noise("_random_weight", out_mu))


class CReLU(nn.Module):
    """Concatenated ReLU: ``cat([relu(x), relu(-x)], dim=-1)`` (doubles the last dimension)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(input), F.relu(-input)], dim=-1)


class CLTLinear(BayesianLinear):
    r"""Moment propagation under a Gaussian (CLT) approximation (Wu et al., 2019; Haussmann, 2021).

    For an input with independent elements of mean ``mu_h`` and variance ``var_h``:

    .. math::
        m = \mu_h\mu_W^\top + \mu_b,\qquad
        v = (v_h + \mu_h^2)(\sigma_W^2)^\top + v_h(\mu_W^2)^\top + \sigma_b^2

    (``var_h = None``: a deterministic input, ``v = mu_h^2 sigma_W^2 + sigma_b^2``), exact moments of the
    pre-activation (C3). Unless ``is_output``, the layer returns the mean and variance of
    ``relu`` (or CReLU) of ``N(m, v)`` from :func:`rln_verified.functional.relu_moments` with
    ``sigma = sqrt(clamp_min(v, tiny))``. The moments (and, float32 on CPU, the activation: RELU-6) are one node,
    :class:`_CLTPreact`, with the values of the ``F.linear`` form.

    MAP mode (ObjectRL's contract): ``var_h`` must be None; returns ``(act(F.linear(mu_h, weight_mu,
    bias_mu)), None)``, without the activation when ``is_output``.

    Raises:
        ValueError: ``act`` not in {"relu", "crelu"} (at construction); in forward, a variance in MAP
            mode or a missing variance for a non-input layer.
    """

    normal_cdf = staticmethod(normal_cdf)
    normal_pdf = staticmethod(normal_pdf)
    relu_moments = staticmethod(relu_moments)
    neg_relu_moments = staticmethod(neg_relu_moments)
    crelu_moments = staticmethod(crelu_moments)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        prior_mean: Prior = None,
        prior_std: Prior = None,
        use_softplus: bool = False,
        manual_reset: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        act: Act = "relu",
        is_input: bool = False,
        is_output: bool = False,
    ) -> None:
        if act not in ("relu", "crelu"):
            raise ValueError(f"act must be 'relu' or 'crelu', got {act!r}")
        super().__init__(in_features, out_features, bias, prior_mean, prior_std, use_softplus, manual_reset,
                         device, dtype)
        self.act: Act = act
        self.is_input = bool(is_input)
        self.is_output = bool(is_output)

    def reset_randomness(self) -> None:
        """Nothing to reset: the forward is analytic (ObjectRL raises NotImplementedError here)."""

    def _activate_map(self, m: torch.Tensor) -> torch.Tensor:
        if self.is_output:
            return m
        if self.act == "relu":
            return F.relu(m)
        return torch.cat([F.relu(m), F.relu(-m)], dim=-1)

    def _activate(self, m: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.is_output:
            return m, v
        s = _safe_sqrt(v)
        return relu_moments(m, s) if self.act == "relu" else crelu_moments(m, s)

    def _check_call(self, var_h: torch.Tensor | None) -> None:
        if self._map and var_h is not None:
            raise ValueError(f"{type(self).__name__}: var_h must be None in MAP mode (the MAP forward is "
                             "deterministic), got a tensor")

    def forward(
        self, mu_h: torch.Tensor, var_h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        ac = _autocast_dtype(mu_h)
        if ac is not None:  # autocast: compute in float32 with autocast off, return the autocast dtype
            cd = _compute_dtype(self.weight_mu.dtype)
            with torch.autocast(mu_h.device.type, enabled=False):
                m, v = self._forward(mu_h.to(cd), self._upcast(var_h, cd))
            return m.to(ac), (None if v is None else v.to(ac))
        return self._forward(mu_h, var_h)

    def _forward(
        self, mu_h: torch.Tensor, var_h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check_call(var_h)
        wm, bm = self.mean()
        if self._map:
            return self._activate_map(F.linear(mu_h, wm, bm)), None
        if var_h is None and not self.is_input:
            raise ValueError(f"{type(self).__name__}: var_h is required for a non-input layer outside MAP mode "
                             "(set is_input=True for a deterministic input)")
        rho_w, rho_b = self.weight_rho, self.bias_rho
        fused = (mu_h.dim() >= 1 and mu_h.shape[-1] == self.in_features and rho_w is not None
                 and (var_h is None or var_h.shape == mu_h.shape) and _plain(mu_h, var_h, wm, bm, rho_w, rho_b))
        if fused and rho_w is not None:
            # One autograd node for the pre-activation, with the std's exp(clamp(rho))**2 inside it (the same
            # values as var()), or var() itself under softplus.
            bounds: tuple[float, float] | None = None
            sw: torch.Tensor = rho_w
            sb: torch.Tensor | None = rho_b
            if self.use_softplus:
                sw, sb = self.var()
            else:
                lo, hi = std_bounds(rho_w.dtype)
                bounds = (math.log(lo), math.log(hi))
            two_d = mu_h.dim() == 2
            mu2 = mu_h if two_d else mu_h.reshape(-1, self.in_features)
            var2 = var_h if two_d or var_h is None else var_h.reshape(-1, self.in_features)
            # The activation joins the node where the fused float32 kernel applies (RELU-6).
            act = None if self.is_output or not gauss.usable(mu2, wm) else self.act
            m, v = _CLTPreact.apply(mu2, var2, wm, bm, sw, sb, bounds, act)  # type: ignore[no-untyped-call]
            if not two_d:
                lead = tuple(mu_h.shape[:-1])
                m, v = m.reshape(*lead, m.shape[-1]), v.reshape(*lead, v.shape[-1])
            if act is not None:
                return m, v
        else:
            wv, bv = self.var()
            m = F.linear(mu_h, wm, bm)
            if var_h is None:
                v = F.linear(mu_h.square(), wv, bv)
            else:
                v = F.linear(var_h + mu_h.square(), wv, bv) + F.linear(var_h, wm.square())
        return self._activate(m, v)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, act={self.act!r}, is_input={self.is_input}, is_output={self.is_output}"


class CLTLinearDet(CLTLinear):
    r"""CLT layer with deterministic weights: no learned std (``weight_rho``, ``bias_rho`` are None).

    Propagates an input variance through the squared means, ``v = v_h (\mu_W^2)^\top``; with
    ``var_h = None`` the output variance is None and the layer is ``act(F.linear(...))``.
    :meth:`std`, :meth:`var` and :meth:`KL` raise ``ValueError``.
    """

    _learn_std: ClassVar[bool] = False

    def var(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise ValueError(f"{type(self).__name__} has no learned standard deviation, so no variance")

    def KL(self) -> tuple[torch.Tensor, int]:
        raise ValueError(f"{type(self).__name__} has deterministic weights, so no KL divergence")

    def _forward(
        self, mu_h: torch.Tensor, var_h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check_call(var_h)
        wm, bm = self.mean()
        m = F.linear(mu_h, wm, bm)
        if self._map or var_h is None:
            return self._activate_map(m), None
        return self._activate(m, F.linear(var_h, wm.square()))


_LAYERS: dict[str, type[BayesianLinear]] = {"bbb": BBBLinear, "lr": LRLinear, "clt": CLTLinear,
                                            "cltdet": CLTLinearDet}


class BayesianMLP(nn.Module):
    r"""An MLP of Bayesian linear layers (ObjectRL's constructor).

    ``depth`` linear layers; hidden layers have ``width`` units (``2 * width`` after CReLU).

    - ``bbb``, ``lr``: ``layer -> [norm] -> act -> ... -> layer``; ``forward(x)`` returns a sample.
      ``has_norm`` inserts :class:`~rln_verified.BayesianRLayerNorm` (no affine) before each
      activation: the hidden activations are samples, so a sample-wise normalization is well defined.
    - ``clt``, ``cltdet``: the activation is inside each layer; ``forward(x, var=None)`` returns the
      predictive ``(mean, var)`` (``var`` None for ``cltdet`` with a deterministic input, and in MAP
      mode). The first layer has ``is_input`` and the last ``is_output`` set. ``has_norm`` raises
      ``ValueError``: a normalization of a random vector has no closed-form moments to propagate.

    Raises:
        ValueError: ``depth < 1``, ``width < 1``, an unknown ``layer_type`` or ``act``, ``has_norm`` with
            a CLT layer type (or with ``width < 2``).
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        depth: int,
        width: int,
        layer_type: LayerType = "lr",
        act: Act = "relu",
        has_norm: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__()
        if layer_type not in _LAYERS:
            raise ValueError(f"layer_type must be one of {sorted(_LAYERS)}, got {layer_type!r}")
        if act not in ("relu", "crelu"):
            raise ValueError(f"act must be 'relu' or 'crelu', got {act!r}")
        for name, v in (("depth", depth), ("width", width), ("dim_in", dim_in), ("dim_out", dim_out)):
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.layer_type: LayerType = layer_type
        self.act: Act = act
        self.is_clt = layer_type in ("clt", "cltdet")
        if has_norm and self.is_clt:
            raise ValueError("has_norm is not available for CLT layers: a normalization of a random vector has no "
                             "closed-form moments to propagate; use layer_type 'bbb' or 'lr'")
        if has_norm and width < 2:
            raise ValueError(f"has_norm needs width >= 2 (R-LayerNorm's window), got {width}")
        self.has_norm = bool(has_norm)
        mult = 2 if act == "crelu" else 1
        dims = [dim_in] + [width] * (depth - 1) + [dim_out]
        ins = [dim_in] + [width * mult] * (depth - 1)
        cls = _LAYERS[layer_type]
        layers: list[nn.Module] = []
        for i in range(depth):
            last = i == depth - 1
            if self.is_clt:
                clt_cls: type[CLTLinear] = CLTLinearDet if layer_type == "cltdet" else CLTLinear
                layers.append(clt_cls(ins[i], dims[i + 1], act=act, is_input=i == 0, is_output=last,
                                      **factory_kwargs))
                continue
            layers.append(cls(ins[i], dims[i + 1], **factory_kwargs))
            if not last:
                if has_norm:
                    from rln_verified._norm_layers import BayesianRLayerNorm

                    layers.append(BayesianRLayerNorm(width, elementwise_affine=False, **factory_kwargs))
                layers.append(CReLU() if act == "crelu" else nn.ReLU())
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None], var: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(x, tuple):  # ObjectRL passes (mean, var) as one argument
            x, var = x
        if not self.is_clt:
            if var is not None:
                raise ValueError(f"an input variance is only used by CLT layers, not by layer_type "
                                 f"{self.layer_type!r}")
            out: torch.Tensor = self.model(x)
            return out
        m, v = x, var
        for layer in self.model:
            m, v = layer(m, v)
        return m, v

    def bayesian_layers(self) -> list[BayesianLinear]:
        return [m for m in self.model if isinstance(m, BayesianLinear)]

    def map(self, on: bool = True) -> None:
        for layer in self.bayesian_layers():
            layer.map(on)

    def set_manual_reset(self, manual_reset: bool = True) -> None:
        for layer in self.bayesian_layers():
            layer.set_manual_reset(manual_reset)

    def reset_randomness(self) -> None:
        for layer in self.bayesian_layers():
            layer.reset_randomness()

    def get_kl(self) -> tuple[torch.Tensor, int]:
        """``(sum of the layers' KL, total number of weight and bias elements with a posterior)``.

        ``cltdet`` layers have no posterior and contribute ``(0, 0)``.
        """
        layers = [m for m in self.bayesian_layers() if m.weight_rho is not None]
        if not layers:
            return next(self.parameters()).new_zeros(()), 0
        kls = [layer.KL() for layer in layers]
        return torch.stack([k for k, _ in kls]).sum(), sum(n for _, n in kls)


__all__ = [
    "INIT_STD",
    "BBBLinear",
    "BayesianLinear",
    "BayesianMLP",
    "CLTLinear",
    "CLTLinearDet",
    "CReLU",
    "LRLinear",
    "std_bounds",
]
