# ruff: noqa: E501  (the specs quote kernel source lines verbatim, some longer than 120 characters)
"""Writes tests/mutation/patches from the specs below: each mutant is (name, module, file, old text, new text,
description), the old text must occur exactly once in HEAD's file, and the patch is the unified diff against HEAD.
Rerun after a kernel source changes so that every patch applies to HEAD again:

    .venv/bin/python tests/mutation/make_patches.py
"""

import difflib
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/mutation/patches"
SP, GF, GA, NF, RN = ("rln_verified/_special.py", "rln_verified/_gaussian_formula.py", "rln_verified/_gaussian.py",
                      "rln_verified/_norm_formula.py", "rln_verified/_norm.py")
BL_STD, BL_OPS, BL_LIN = ("rln_verified/_bayesian_std.py", "rln_verified/_bayesian_ops.py",
                          "rln_verified/_bayesian_linear.py")
RC, GC = "rln_verified/_native/rnorm.c", "rln_verified/_native/gauss.c"

S = []  # (id, module, listed survivor's claim or "", file, old, new, description)
def m(id_, mod, f, old, new, desc, i17=""):
    S.append((id_, mod, i17, f, old, new, desc))

# ---- the listed survivors (prefix i17-): each breaks the stated claim named in its last field ----------
m("i17-psi4-no-clamp", "special", SP, "    d = torch.clamp(d, max=0.25)\n", "", "psi' is not clamped to its exact bound 1/4", "PSI-4")
m("i17-psi3-switch-0.04", "special", SP, "    torch.float64: (0.1, 7),", "    torch.float64: (0.04, 7),",
  "float64 switch point moved from 0.1 to 0.04: the direct form runs where its cancellation factor reaches ~100", "PSI-3")
m("i17-psi3-log-not-log1p", "special", SP, "    direct = torch.log1p(tb) - tb / (1.0 + tb)",
  "    direct = torch.log(1.0 + tb) - tb / (1.0 + tb)", "direct branch uses log(1 + t) instead of log1p(t) (1 + t rounds)", "PSI-3")
m("i17-gauss1-no-pow2", "gaussian", GA, "    out = ldexp(base / s_mant, -nexp - e)\n", "    out = ldexp(base, -nexp) / s_ok\n",
  "normal_pdf divides a possibly subnormal phi(z) by sigma (no power-of-two bookkeeping)", "GAUSS-1")
m("i17-kl1-no-logdiff", "gaussian", GA,
  "    ln_r = torch.where(rr >= tiny, torch.log(torch.where(rr >= tiny, rr, one)), torch.log(sq_l) - torch.log(sp_l))",
  "    ln_r = torch.log(rr)", "kl_normal takes log of the quotient even where it underflows (no log sq - log sp)", "KL-1")
m("i17-n3-no-f64-stats", "norm", NF, "    return torch.float64 if dtype == torch.float32 else dtype",
  "    return dtype", "float32 planes keep their per-group statistics in float32 (eager path)", "N3")
m("i17-var-grad-sigma2", "bayesian_linear", BL_STD, "            g_rho = g_rho * 2.0\n", "            g_rho = g_rho * 1.0\n",
  "d var/d rho = sigma^2 instead of 2 sigma^2 (ExpStd, square=True)", "C6/var")
m("i17-u-one-minus-exp", "norm", NF, "        return torch.exp(alpha * p), alpha * dp, -torch.expm1(-2.0 * alpha * p)",
  "        return torch.exp(alpha * p), alpha * dp, 1.0 - torch.exp(-2.0 * alpha * p)",
  "u = 1 - exp(-2 alpha psi) (cancels to 0 for small psi) on the eager path", "N4/u")
m("i17-fused-psi-direct", "rnorm.c", RC,
  """    if (t <= 0.1) {
        const double w = t / (2.0 + t), z = w * w;
        const double a = 1.0 / 3 + z * (1.0 / 5 + z * (1.0 / 7 + z * (1.0 / 9 + z * (1.0 / 11 + z * (1.0 / 13
                         + z * (1.0 / 15))))));
        return 2.0 * z / (1.0 + w) + 2.0 * w * z * a;
    }
""", "", "fused kernel's psi always in the direct form log1p(t) - t/(1+t)", "N11/u")

# ---- _special.py ------------------------------------------------------------------------------------------
m("sp-softplus-f32-threshold", "special", SP, "torch.float64: 37.0, torch.float32: 17.0}", "torch.float64: 37.0, torch.float32: 10.0}",
  "float32 softplus returns x from x > 10 (exp(-x) is not yet below u x)")
m("sp-softplus-f64-threshold", "special", SP, "torch.float64: 37.0, torch.float32: 17.0}", "torch.float64: 30.0, torch.float32: 17.0}",
  "float64 softplus returns x from x > 30")
m("sp-log1mexp-split", "special", SP, "    near = y <= _LN2\n", "    near = y <= 0.1\n",
  "Maechler's split moved from ln 2 to 0.1 (log1p(-exp(-y)) cancels on (0.1, ln 2])")
m("sp-log1mexp-swap", "special", SP, "torch.where(near, torch.log(-torch.expm1(-yn)), torch.log1p(-torch.exp(-yf)))",
  "torch.where(near, torch.log1p(-torch.exp(-yn)), torch.log1p(-torch.exp(-yf)))", "log1p(-exp(-y)) also near 0 (cancels)")
m("sp-inv-softplus-zero", "special", SP, "    x = torch.where(yc == 0, torch.full_like(yc, -math.inf), x)\n", "",
  "inv_softplus(0) no longer -inf")
m("sp-psi-inf", "special", SP, "    out = torch.where(t == math.inf, t, out)\n", "", "psi(inf) finite instead of inf")
m("sp-dpsi-square-overflow", "special", SP, "    d = (tp / (1.0 + tp)) / (1.0 + tp)", "    d = tp / ((1.0 + tp) * (1.0 + tp))",
  "psi' as t/(1+t)^2 with the square formed (overflows for large t)")
m("sp-series-denominator", "special", SP, "    series = 2.0 * z / (1.0 + w) + 2.0 * w * z * a",
  "    series = 2.0 * z / (1.0 + z) + 2.0 * w * z * a", "series' first term divided by 1 + w^2 instead of 1 + w")
m("sp-f32-terms-5", "special", SP, "    torch.float32: (1.0, 8),", "    torch.float32: (1.0, 5),",
  "float32 series truncated after 5 terms (truncation ~5e-7 relative at t = 1, PSI-1 requires < eps/4)")
m("sp-psi-zero-nan", "special", SP, "    return torch.where((t < 0) | torch.isnan(t), torch.full_like(t, math.nan), out)",
  "    return torch.where((t <= 0) | torch.isnan(t), torch.full_like(t, math.nan), out)", "psi(0) = NaN")
m("sp-dpsi-inf-where", "special", SP, "    return torch.where(t == math.inf, torch.zeros_like(t), d)\n", "    return d\n",
  "psi'(inf) from the masked value instead of the explicit 0")

# ---- _gaussian.py -----------------------------------------------------------------------------------------
m("ga-xexp-max-30", "gaussian", GF, "_X_EXP_MAX = 100.0", "_X_EXP_MAX = 30.0", "phi's argument clamped at 30 instead of 100")
m("ga-no-ln2-lo", "gaussian", GF, "    f = (ee - nexp * _LN2_HI) - nexp * _LN2_LO\n", "    f = ee - nexp * _LN2_HI\n",
  "Cody-Waite reduction without the low part of ln 2")
m("ga-logcdf-split-40", "gaussian", GA, "    pos = z > 1\n", "    pos = z > 40\n", "normal_logcdf uses log_ndtr up to z = 40")
m("ga-relu-vpos-sign", "gaussian", GF,
  "    v_pos = cdf + y * y * cdf * q - y * pdf * (cdf - q) - pdf * pdf",
  "    v_pos = cdf + y * y * cdf * q - y * pdf * (cdf + q) - pdf * pdf", "rearranged variance with (P + Q) for (P - Q)")
m("ga-xsplit-3", "gaussian", GF, "X_SPLIT = 4.5\n", "X_SPLIT = 3.0\n", "continued-fraction tail from a < -3 instead of -4.5")
m("ga-relu-bwd-mu-factor", "gaussian", GA, "        g_mu = g_mean * cdf + g_var * (2.0 * mean_q)",
  "        g_mu = g_mean * cdf + g_var * mean_q", "RELU-5: dvar/dmu missing its factor 2 (float64 backward)")
m("ga-sigma-zero-not-nan", "gaussian", GA, "    z = torch.where(sc > 0, z, torch.full_like(z, math.nan))",
  "    z = torch.where(sc >= 0, z, torch.full_like(z, math.nan))", "sigma = 0 not mapped to NaN")
m("ga-kl-t-square", "gaussian", GA, "    g_up = t * (t / (1.0 + t)) - psi(t)", "    g_up = t * t / (1.0 + t) - psi(t)",
  "KL's t^2/(1+t) with t^2 formed (overflows)")
m("ga-kl-half", "gaussian", GA, "    kl = 0.5 * (d * d + g)\n", "    kl = 0.5 * d * d + g\n", "KL = d^2/2 + g (g not halved)")
m("ga-tail-var-r1", "gaussian", GF, "    var_t = ldexp(sigma * (core * (2.0 * r2 - h1)), -n1) * ldexp(sigma, n1 - nexp)",
  "    var_t = ldexp(sigma * (core * (2.0 * r1 - h1)), -n1) * ldexp(sigma, n1 - nexp)", "tail variance with r1 for r2")

# ---- _norm_formula.py / _norm.py -------------------------------------------------------------------------
m("nf-reuse-weights-3", "norm", NF, "        return [2 / 3, 5 / 3, 2 / 3]", "        return [2 / 3, 4 / 3, 2 / 3]",
  "reuse weights of a 3-long axis wrong in the middle")
m("nf-box-reflect-end", "norm", NF, "    t.narrow(dim, n - 1, 1).add_(x.narrow(dim, n - 2, 1))\n    return t\n\n\ndef _box_sum_adjoint_1d",
  "    t.narrow(dim, n - 1, 1).add_(x.narrow(dim, n - 1, 1))\n    return t\n\n\ndef _box_sum_adjoint_1d",
  "reflect padding at the end reads x[n-1] instead of x[n-2]")
m("nf-box-adjoint-end", "norm", NF, "    t.narrow(dim, n - 2, 1).add_(z.narrow(dim, n - 1, 1))\n", "",
  "adjoint window sum misses the fold at n-2")
m("nf-group-scale-up", "norm", NF, "    return torch.ldexp(torch.ones_like(m), -torch.clamp(e, min=0))",
  "    return torch.ldexp(torch.ones_like(m), -e)", "group scale may exceed 1 (eps s^2 overflows for tiny groups)")
m("nf-no-mean-refinement", "norm", NF,
  "    mean = xs.mean(dim=(-2, -1), keepdim=True)\n    mean = mean + (xs - mean).mean(dim=(-2, -1), keepdim=True)\n    return xs - mean, mean, s",
  "    mean = xs.mean(dim=(-2, -1), keepdim=True)\n    return xs - mean, mean, s", "no refinement step of the mean (eager)")
m("nf-scaled-eps-no-floor", "norm", NF, "    return torch.clamp(eps * (s * s), min=float(torch.finfo(s.dtype).tiny))",
  "    return eps * (s * s)", "eps s^2 may underflow to 0")
m("nf-norm-const-1d", "norm", NF, "    return 9.0 if two_d else 3.0", "    return 9.0 if two_d else 2.0",
  "width-3 window normalized by 2")
m("nf-nu-no-clamp", "norm", NF, "    nu = torch.clamp((ssw - sbx) / m, min=0.0)\n    return {",
  "    nu = (ssw - sbx) / m\n    return {", "nu not clamped at 0 (eager stats)")
m("nf-no-unscaled-inverse", "norm", NF, "    return torch.where(v == 0, 1.0 / (math.sqrt(eps) * f), a * s)",
  "    return a * s", "eager backward forms 1/sigma from the scaled group also where eps s^2 underflowed (float64 > 2^503)")
m("nf-plain-no-unscaled-recentre", "norm", NF, "    y = torch.where(flat, d * (1.0 / (math.sqrt(eps) * f)), y)\n", "",
  "plain formula (torch.func, double backward) keeps the scaled 1/sigma at a huge float64 constant group")
m("nf-plain-dlogf", "norm", NF, "    return f, 1.0 / f, torch.zeros_like(t)", "    return f, 1.0 / (f * f), torch.zeros_like(t)",
  "plain inflation's d log f/dt = 1/f^2")
m("nf-weighted-edge-rows", "norm", NF, "            out = out + d * (row * row * wl).sum(dim=(-2, -1), keepdim=True)",
  "            out = out + d * (row * row).sum(dim=(-2, -1), keepdim=True)", "edge rows' weights ignore the column weights")
m("rn-bwd-gu-one-minus-u", "norm", RN, "            g_t = g_t + gu * 2.0 * dlogf * (1.0 - u)",
  "            g_t = g_t + gu * 2.0 * dlogf", "eager backward: du/dt missing its (1 - u)")
m("rn-bwd-kxc-sign", "norm", RN, "        k_xc = -(a_sum / m) * a / sigma + coef * (1.0 - r)",
  "        k_xc = -(a_sum / m) * a / sigma + coef * (1.0 + r)", "eager backward: (1 + r) for (1 - r)")
m("rn-bwd-glam-no-r", "norm", RN, "        g_lam = (g_t * r).sum()", "        g_lam = g_t.sum()", "eager backward: dL/dlambda without r")

# ---- _bayesian_std.py, _bayesian_ops.py, _bayesian_linear.py ----------------------------------------------
m("bl-std-bound-hi", "bayesian_linear", BL_STD, "    return float(fi.tiny) ** 0.25, float(fi.max) ** 0.125",
  "    return float(fi.tiny) ** 0.25, float(fi.max) ** 0.25", "upper std bound max**(1/4) instead of max**(1/8)")
m("bl-lr-bwd-q-half", "bayesian_linear", BL_OPS, "        q = torch.mul(g, eps).div_(s)  # 2 dL/dv", "        q = torch.mul(g, eps).div_(2 * s)  # 2 dL/dv",
  "LR backward: q halved")
m("bl-bbb-bwd-no-sigma", "bayesian_linear", BL_OPS, "                g_rw = torch.mul(g_w, eps_w).mul_(sd_w)\n",
  "                g_rw = torch.mul(g_w, eps_w)\n", "BBB backward: drho_W without sigma_W")
m("bl-clt-bwd-mu-factor", "bayesian_linear", BL_OPS, "                g_mu = torch.mm(g_m, wm).addcmul_(mu_h, g1, value=2.0)",
  "                g_mu = torch.mm(g_m, wm).addcmul_(mu_h, g1, value=1.0)", "CLT backward: dmu_h missing the factor 2")
m("bl-clt-no-vh-mu2", "bayesian_linear", BL_OPS, "            assert wm2 is not None\n            v.addmm_(var_h, wm2.t())\n",
  "            assert wm2 is not None\n", "CLT forward: v misses v_h mu_W^2")
m("bl-safe-sqrt-floor-0", "bayesian_linear", BL_STD,
  "        return out\n    return torch.sqrt(var.clamp_min(torch.finfo(var.dtype).tiny))",
  "        return out\n    return torch.sqrt(var.clamp_min(0.0))", "safe_sqrt (small tensors) clamps at 0: infinite gradient at 0")
m("bl-kl-no-bias", "bayesian_linear", BL_LIN, "            kl = kl + kl_normal(bm, bs, pm, ps).sum()", "            kl = kl + 0.0 * kl_normal(bm, bs, pm, ps).sum()",
  "KL() drops the bias terms")
m("bl-expstd-no-mask", "bayesian_linear", BL_STD, "        if mask is not None:\n            g_rho = g_rho.masked_fill(mask, 0.0)\n", "",
  "ExpStd backward: saturated rho gets a gradient")
m("bl-prior-std-zero", "bayesian_linear", BL_LIN, "    if not bool(((std > 0) & torch.isfinite(std)).all()):",
  "    if not bool(((std >= 0) & torch.isfinite(std)).all()):", "a tensor prior std of 0 is accepted")
m("bl-bias-init-bound", "bayesian_linear", BL_LIN, "            bound = 1.0 / math.sqrt(self._fan_in)", "            bound = 1.0 / self._fan_in",
  "bias init bound 1/fan_in instead of 1/sqrt(fan_in)")
m("bl-rho-of-half", "bayesian_linear", BL_LIN, "        return math.log(std)\n", "        return 0.5 * math.log(std)\n",
  "initial rho gives std sqrt(0.01)")

# ---- rnorm.c ----------------------------------------------------------------------------------------------
m("rc-pad-left-coef", "rnorm.c", RC, "        o[-1] = o[0] + 3.0 * o[1];", "        o[-1] = o[0] + 2.0 * o[1];", "pad5: wrong left pad coefficient")
m("rc-pad-right-coef", "rnorm.c", RC, "        o[l + 1] = -3.0 * o[l - 1] - 5.0 * o[l - 2];", "        o[l + 1] = -3.0 * o[l - 1] - 4.0 * o[l - 2];",
  "pad5: wrong right pad coefficient")
m("rc-vv-end-row-vec", "rnorm.c", RC, "        *(v4d *)(oj + ps) = (a + a + a) + 6.0 * b + (c + c) + d;",
  "        *(v4d *)(oj + ps) = (a + a + a) + 5.0 * b + (c + c) + d;", "plane_vv_pad: wrong second-row coefficient (vector lanes)")
m("rc-vv-end-row-scalar", "rnorm.c", RC, "        oj[(p - 1) * ps] = xj[(p - 3) * l] + 3.0 * xj[(p - 2) * l] + 2.0 * xj[(p - 1) * l];",
  "        oj[(p - 1) * ps] = xj[(p - 3) * l] + 3.0 * xj[(p - 2) * l] + 3.0 * xj[(p - 1) * l];",
  "plane_vv_pad: wrong last-row coefficient (scalar columns, l % 4 != 0)")
m("rc-centre-loop-bound", "rnorm.c", RC, "    for (i64 j = 1; j < m - 1; ++j) {\n        const double t = (double)x[j] - mean;",
  "    for (i64 j = 1; j < m - 2; ++j) {\n        const double t = (double)x[j] - mean;", "centre: off-by-one loop bound")
m("rc-box-v-loop-bound", "rnorm.c", RC, "    for (i64 j = l; j < m - l; ++j) o[j] = h[j - l] + h[j] + h[j + l];",
  "    for (i64 j = l; j < m - l - 1; ++j) o[j] = h[j - l] + h[j] + h[j + l];", "plane_box_v: off-by-one loop bound")
m("rc-float-mean-acc", "rnorm.c", RC, "            double sum = 0.0;\n#pragma omp simd reduction(+ : sum)\n            for (i64 j = 0; j < m; ++j) sum += (double)x[j];",
  "            float sum = 0.0f;\n#pragma omp simd reduction(+ : sum)\n            for (i64 j = 0; j < m; ++j) sum += x[j];",
  "mean accumulated in float instead of double")
m("rc-dropped-fma-ssw", "rnorm.c", RC, "        ssw = fma(wf[j], t2, ssw);", "        ssw = wf[j] * t2 + ssw;", "centre: fma dropped in sum w x_c^2")
m("rc-u-sign", "rnorm.c", RC, "        *u = -em * (2.0 + em);", "        *u = -em * (2.0 - em);", "u = -em (2 - em)")
m("rc-cw-swapped", "rnorm.c", RC, "    const double cw = c->two_d ? 9.0 : 3.0;\n    scr = place(scr, f->y + g0 * m);",
  "    const double cw = c->two_d ? 3.0 : 9.0;\n    scr = place(scr, f->y + g0 * m);", "forward: window constants swapped")
m("rc-bwd-one-minus-u", "rnorm.c", RC, "            one_m_u = inv_f * inv_f;", "            one_m_u = inv_f;", "backward: 1 - u = 1/f instead of 1/f^2")
m("rc-bwd-k1-sign", "rnorm.c", RC, "        const double k_1 = k_xc - coef;", "        const double k_1 = k_xc + coef;", "backward: k_1 = k_xc + coef")
m("rc-reuse-weights-div", "rnorm.c", RC, "    for (i64 i = 0; i < n; ++i) w[i] /= 3.0;", "    for (i64 i = 0; i < n; ++i) w[i] /= 2.0;",
  "reuse weights divided by 2")
m("rc-box-adj-n2", "rnorm.c", RC, "        out[0] = z[0] + 2.0 * z[1];", "        out[0] = z[0] + z[1];", "box_row_adj: n = 2 case misses the reflected lane")
m("rc-centre-reflect", "rnorm.c", RC, "        h[a] = xa1 + xa + xa1;", "        h[a] = xa + xa + xa1;", "centre: reflect reads x[0] for x[-1]")
m("rc-plain-q", "rnorm.c", RC, "            q = dlogf * dlogf;", "            q = dlogf;", "backward (plain): q = 1/(1+t)")
m("rc-dpsi-no-clamp", "rnorm.c", RC, "    return d > 0.25 ? 0.25 : d;", "    return d;", "fused dpsi not clamped to 1/4")
# the vector paths: planes of width 8 (rows as vectors) and rows of 8k (8-column strips)
m("rc-box8-reflect", "rnorm.c", RC, "    return addm(SHUF(d, 1, 0, 1, 2, 3, 4, 5, 6), d)", "    return addm(SHUF(d, 0, 0, 1, 2, 3, 4, 5, 6), d)",
  "box8: the left end reads lane 0 for the reflected x[-1]")
m("rc-bwd8-fold", "rnorm.c", RC, "        if (i == 1) w += *(const v8d *)vr;\n", "", "bwd8: the top row's reflected lane is not folded back")
m("rc-strip-right-reflect", "rnorm.c", RC, "            const v8d xn = last ? SHUF(cur, 1, 2, 3, 4, 5, 6, 7, 6) : ld8f(r + 1);",
  "            const v8d xn = last ? SHUF(cur, 1, 2, 3, 4, 5, 6, 7, 7) : ld8f(r + 1);", "stats_strips: the right end reads x[l-1] for x[l]")
m("rc-strip-vv-coef", "rnorm.c", RC, "            *(v8d *)(oj + ps) = fma8(three, a, fma8(splat8(6.0), b, fma8(two, cc, d)));",
  "            *(v8d *)(oj + ps) = fma8(three, a, fma8(splat8(5.0), b, fma8(two, cc, d)));", "bwd_strips: wrong second-row coefficient")
m("rc-strip-cj-wp", "rnorm.c", RC, "        const v8d cv = splat8(k.coef * c->wp[i]);", "        const v8d cv = splat8(k.coef);",
  "bwd_strips: the row factor of the reuse weight is dropped")
m("rc-strip-c-last", "rnorm.c", RC, "c_last = fma8(cv, *(const v8d *)(wl + l - 8), k1v);", "c_last = fma8(cv, *(const v8d *)(wl + 8), k1v);",
  "bwd_strips: the last vector of a row takes the inside reuse weights")
m("rc-row-end-lane", "rnorm.c", RC, "                const v8d xn = j0 + 8 == l ? SHUF(cur, 1, 2, 3, 4, 5, 6, 7, 6) : ld8f(r + j0 + 1);",
  "                const v8d xn = j0 + 8 == l ? SHUF(cur, 1, 2, 3, 4, 5, 6, 7, 7) : ld8f(r + j0 + 1);",
  "stats_strips (rows on their own): the right end reads x[l-1] for x[l]")
m("rc-out8-no-bias", "rnorm.c", RC, "st8f(y + j, fma8((ld8f(x + j) - mv) * kv, ld8f(c->w + j), ld8f(c->b + j)));",
  "st8f(y + j, ((ld8f(x + j) - mv) * kv) * ld8f(c->w + j));", "out8: the elementwise bias is dropped")
m("rc-out8-mode1-sign", "rnorm.c", RC, "st8f(y + j, fma8(ld8f(x + j) - mv, sc, bv));",
  "st8f(y + j, fma8(ld8f(x + j) + mv, sc, bv));", "out8: x + mean for x - mean (per-channel affine)")
m("rc-vlog-coef", "rnorm.c", RC, "    q = fma8(q, z, splat8(2.0 / 5));", "    q = fma8(q, z, splat8(2.0 / 7));",
  "vector log: wrong atanh series coefficient of s^5")
m("rc-vlog-no-exp-step", "rnorm.c", RC, "    e = _mm512_mask_add_pd(e, big, e, _mm512_set1_pd(1.0));\n", "",
  "vector log: the mantissa is halved above sqrt(2) but the exponent is not raised")
m("rc-vlog-no-ln2-lo", "rnorm.c", RC, "fma8(ev, splat8(1.90821492927058770002e-10), lm));",
  "lm);", "vector log: e ln2 without the low part of ln2 (error e 1.9e-10)")
m("rc-vpsi-switch", "rnorm.c", RC, "_mm512_cmp_pd_mask((__m512d)t, _mm512_set1_pd(0.1), _CMP_LE_OQ);",
  "_mm512_cmp_pd_mask((__m512d)t, _mm512_set1_pd(0.001), _CMP_LE_OQ);", "vector psi: the direct form from t > 0.001 (cancels ~4000x)")
m("rc-vexpm1-coef", "rnorm.c", RC, "    p = fma8(p, r, splat8(1.0 / 24.0));", "    p = fma8(p, r, splat8(1.0 / 20.0));",
  "vector expm1: wrong Taylor coefficient of r^4")
m("rc-vexpm1-recon", "rnorm.c", RC, "    return fma8((v8d)k2, er, (v8d)k2 - 1.0);", "    return fma8((v8d)k2, er, 1.0 - (v8d)k2);",
  "vector expm1: 2^k e_r + (1 - 2^k)")
m("rc-scal8-nan-lane", "rnorm.c", RC, "        if ((ok >> k) & 1) {", "        if (1) {",
  "vector scalars: a NaN/inf lane keeps the masked vector result instead of the scalar special case")
m("rc-scal8-tail-scalar", "rnorm.c", RC, """            for (i64 g = gb; g < ge; g += 8)
                fwd_scalars8(""", """            i64 g = gb;
            for (; g + 8 <= ge; g += 8)
                fwd_scalars8(vb + (g - gb), nub + (g - gb), 8, c, f->stats + NSTAT * g, f->u_out + g);
            for (; g < ge; ++g) {
                double *st = f->stats + NSTAT * g;
                double u;
                fwd_scalars(vb[g - gb], nub[g - gb], c->eps, c->lam, c->alpha, c->bayes, st + 1, st + 2, st + 3, &u);
                f->u_out[g] = (float)u;
            }
            for (; g < gb; g += 8)
                fwd_scalars8(""", "vector scalars: a short last block takes the scalar routine (a group's bits depend on its position)")
m("rc-strip-qe-rows", "rnorm.c", RC, "            if (i < 2 || i >= p - 2) {\n                qe = fma8(d, d, qe);",
  "            if (i < 1 || i >= p - 1) {\n                qe = fma8(d, d, qe);", "stats strips: rows 1 and p - 2 weighted as interior rows (wp = 1)")
m("rc-stats8-qi-rows", "rnorm.c", RC, "        if (i < p - 2) { /* wp_i = 1", "        if (i < p - 1) { /* wp_i = 1",
  "stats8: row p - 2 weighted as an interior row")
m("rc-bwd-inv-m", "rnorm.c", RC, "c->inv_m = 1.0 / (double)c->m;", "c->inv_m = 1.0 / (double)(c->m + 1);",
  "backward scalars: 1/(m + 1) for 1/m")
m("rc-fused-odd-rows", "rnorm.c", RC, "                if (i & 1) { s1b += ge; s2b = fma8(ge, e, s2b); }",
  "                if (i & 1) { s1b += ge; s2b = fma8(ge, d, s2b); }", "fused backward pass: odd rows pair g_y with the row above's x_c")
m("rc-strip8-box-adj", "rnorm.c", RC, "            const v8d t5 = box8_adj(box8(*(const v8d *)(zb + i * ps + 8)));",
  "            const v8d t5 = box8(box8(*(const v8d *)(zb + i * ps + 8)));", "strips of width 8: box8 twice for box8_adj(box8(.)) (the adjoint's reflected lanes)")
m("rc-a-one-plus-em", "rnorm.c", RC, "        *a = exp(z) / sig;", "        *a = (1.0 + em) / sig;",
  "scalar forward: a = (1 + expm1(-alpha psi))/sigma (loses exp(-alpha psi) below 2^-53)")
m("rc-a8-one-plus-em", "rnorm.c", RC, "    const v8d a = ex / sig, u = -em * (2.0 + em) + 0.0;",
  "    const v8d a = (1.0 + em) / sig, u = -em * (2.0 + em) + 0.0;", "8-lane forward: a = (1 + expm1(-alpha psi))/sigma")
m("rc-vexp-recon", "rnorm.c", RC, "    *ex = fma8((v8d)k2, er, (v8d)k2);", "    *ex = fma8((v8d)k2, er, (v8d)k2 - 1.0) + 1.0;",
  "8-lane exp as 1 + expm1 (the same loss)")
m("rc-vexpm1-nan-clamp", "rnorm.c", RC, "    z = (v8d)_mm512_max_pd(_mm512_set1_pd(-800.0), (__m512d)z);",
  "    z = (v8d)_mm512_max_pd((__m512d)z, _mm512_set1_pd(-800.0));", "8-lane expm1: the clamp turns a NaN z into -800 (u = 1, a = 0)")
m("rc-u8-negative-zero", "rnorm.c", RC, "u = -em * (2.0 + em) + 0.0; /* + 0", "u = -em * (2.0 + em); /* + 0",
  "8-lane u is -0 where em = +0 (the scalar route gives +0)")
m("rc-dpsi-one-w", "rnorm.c", RC, "    double d = (t * w) * w;", "    double d = t * w;", "fused dpsi: t/(1+t) for t/(1+t)^2")

# ---- gauss.c ----------------------------------------------------------------------------------------------
m("gc-phi-taylor-coef", "gauss.c", GC, "p23 = 1.0 / 24 + s * (1.0 / 120)", "p23 = 1.0 / 24 + s * (1.0 / 720)", "phi: wrong Taylor coefficient of s^5")
m("gc-phi-no-ln2-lo", "gauss.c", GC, "    const v4d s = kd * LN2_LO - (e - kd * LN2_HI); /* -r; e - kd LN2_HI is exact */",
  "    const v4d s = -(e - kd * LN2_HI);", "phi: Cody-Waite without the low part of ln 2")
m("gc-a-clamp-4", "gauss.c", GC, "#define A_CLAMP 40.0", "#define A_CLAMP 4.0", "a clamped at 4 instead of 40")
m("gc-cf-depth-8", "gauss.c", GC, "#define CF_DEPTH 32", "#define CF_DEPTH 8", "continued fraction of depth 8")
m("gc-tail-q-r1", "gauss.c", GC, "    *q = *pdf * r0;", "    *q = *pdf * r1;", "tail: Q(x) = phi r1 for the backward")
m("gc-cf-index", "gauss.c", GC, "        r = 1.0 / (x + (double)n * r);", "        r = 1.0 / (x + (double)(n + 1) * r);", "tail: continued fraction index off by one")
m("gc-bwd-mu-factor", "gauss.c", GC, "    const v4d g_mu = gm * cdf + gv * (2.0 * mean_q);", "    const v4d g_mu = gm * cdf + gv * mean_q;",
  "backward: dvar/dmu missing its 2")
m("gc-bwd-dv-factor", "gauss.c", GC, "g_s / (2.0 * sg), vfill(0.0));", "g_s / sg, vfill(0.0));", "backward: dL/dv = dL/dsigma / sigma")
m("gc-vpos-sign", "gauss.c", GC, "        const v4d v_pos = cdf + y * y * cdf * q - y * pdf * (cdf - q) - pdf * pdf;",
  "        const v4d v_pos = cdf + y * y * cdf * q - y * pdf * (cdf + q) - pdf * pdf;", "forward: (P + Q) for (P - Q)")
m("gc-erfcx-t", "gauss.c", GC, "2.0 * y100 - __builtin_convertvector(2 * k + 1, v4d));", "2.0 * y100 - __builtin_convertvector(2 * k - 1, v4d));",
  "erfcx: wrong Chebyshev argument")
m("gc-expf-coef", "gauss.c", GC, "    p = p * r + 1.3981999507e-3f;", "    p = p * r + 1.3981999507e-2f;", "EXP-1: wrong polynomial coefficient")
m("gc-exp-nan-mask", "gauss.c", GC, "    return below | above | (rho != rho);", "    return below | above;", "EXP-1: NaN rho not in the saturation mask")
m("gc-kl-near-sign", "gauss.c", GC, "    const v4d g_near = t * s - tail;", "    const v4d g_near = t * s + tail;",
  "KL near branch: the series added instead of subtracted")
m("gc-kl-series-arg", "gauss.c", GC, "    const v4d x = vsel(near, t, f);", "    const v4d x = vsel(near, f, t);",
  "KL: the shared series takes each branch's argument in the other's lanes")
m("gc-klog-exponent", "gauss.c", GC, "    e = e - big; /* big lanes are -1: e + 1 */", "    e = e + big;", "KL log: exponent adjusted the wrong way")
m("gc-kl-bwd-dsq", "gauss.c", GC, "    *g_sq = vsel(bad, vfill(NAN), go * (((sq - sp) * (sq + sp)) / (sp2 * sq)));",
  "    *g_sq = vsel(bad, vfill(NAN), go * (((sq - sp) * (sq + sp)) / (sp2 * sp)));", "KL backward: dsq divides by sp^3")

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.patch"):
        old.unlink()
    head = {}
    bad = 0
    for id_, mod, i17, f, old, new, desc in S:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:{f}"], capture_output=True, text=True, check=True).stdout
        n = src.count(old)
        if n != 1:
            print(f"{id_}: old text found {n} times in {f}", file=sys.stderr)
            bad += 1
            continue
        mut = src.replace(old, new)
        diff = "".join(difflib.unified_diff(src.splitlines(True), mut.splitlines(True), f"a/{f}", f"b/{f}", n=3))
        hdr = f"Mutant: {id_}\nModule: {mod}\n" + (f"Issue17: {i17}\n" if i17 else "") + f"Description: {desc}\n\n"
        (OUT / f"{id_}.patch").write_text(hdr + diff)
    print(len(S), "specs,", bad, "bad")
    sys.exit(1 if bad else 0)
