"""The samples and moments of the Bayesian linear layers as single autograd nodes.

Each layer's sample or moments is one autograd node with a hand-written backward (``BBBSample``, ``LRSample``,
``CLTPreact``; C2, C3, C5, C6 in ``proofs/bayesian_linear.md``), which forms the same values as the ``F.linear``
forms and each product the gradients need once; float32 on CPU, the std's exp (EXP-1) and the CLT activation
(RELU-6) run the fused kernel of ``_native/gauss.py``. The plain torch forms (``_bbb_plain``, ``_lr_plain``,
``_clt_plain``) give the same values: every hand-written backward, asked for a graph (``create_graph=True``), returns
their VJP instead (``_dispatch.recompute_vjp``), so second and higher derivatives are right.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rln_verified._bayesian_std import no_autocast_backward, safe_sqrt_plain, sqrt_and_mask, squared_std, std_plain
from rln_verified._dispatch import recompute_vjp
from rln_verified._native import gauss


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


__all__ = ["BBBSample", "CLTPreact", "LRSample"]
