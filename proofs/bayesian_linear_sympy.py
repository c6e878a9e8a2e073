"""Machine checks of the algebra in proofs/bayesian_linear.md.

Run as a plain script; exits non-zero when a step fails. Each function names the proof step it checks.
"""

from __future__ import annotations

import sys

import sympy as sp

FAILURES: list[str] = []


def ok(name: str, cond: bool) -> None:
    print(f"  [{'ok' if cond else 'FAIL'}] {name}")
    if not cond:
        FAILURES.append(name)


def zero(expr: sp.Expr) -> bool:
    return bool(sp.simplify(sp.expand(expr)) == 0)


mw, sw, mh, vh, mb, sb, xx = sp.symbols("mu_w sigma_w mu_h v_h mu_b sigma_b x", real=True)
sw_p, sb_p, vh_p = sp.symbols("sigma_w sigma_b v_h", positive=True)


def moments_of_product() -> tuple[sp.Expr, sp.Expr]:
    """E and Var of W h for independent W ~ N(mu_w, s_w^2), h with mean mu_h and variance v_h, from the
    raw moments E W^2 = mu_w^2 + s_w^2, E h^2 = mu_h^2 + v_h (independence: E (W h)^k = E W^k E h^k)."""
    ew, ew2 = mw, mw**2 + sw_p**2
    eh, eh2 = mh, mh**2 + vh_p
    mean = ew * eh
    var = ew2 * eh2 - mean**2
    return mean, var


def check_product_variance() -> None:
    """C3 step 1: Var(W h) = (v_h + mu_h^2) s_w^2 + v_h mu_w^2 (the layer's formula, one term)."""
    print("check_product_variance")
    mean, var = moments_of_product()
    ok("E[W h] = mu_w mu_h", zero(mean - mw * mh))
    ok("Var[W h] = (v_h + mu_h^2) s_w^2 + v_h mu_w^2", zero(var - ((vh_p + mh**2) * sw_p**2 + vh_p * mw**2)))
    ok("v_h = 0 gives mu_h^2 s_w^2 (input layer)", zero(var.subs(vh_p, 0) - mh**2 * sw_p**2))
    ok("s_w = 0 gives v_h mu_w^2 (CLTLinearDet)", zero(var.subs(sw_p, 0) - vh_p * mw**2))


def check_sum_of_independent_terms() -> None:
    """C3 step 2: for a sum of n independent terms plus an independent bias, the variance is the sum of the
    variances (covariances vanish); checked on n = 3 with symbolic second moments."""
    print("check_sum_of_independent_terms")
    n = 3
    a = sp.symbols(f"a0:{n}", real=True)  # means of the terms
    q = sp.symbols(f"q0:{n}", positive=True)  # second raw moments
    e_sum = sum(a) + mb
    # E (sum + b)^2 with independence: E t_i t_j = a_i a_j (i != j), E t_i^2 = q_i, E b^2 = mb^2 + sb^2.
    e2 = sum(q) + sum(a[i] * a[j] for i in range(n) for j in range(n) if i != j) + 2 * mb * sum(a) + mb**2 + sb_p**2
    ok("Var(sum + b) = sum Var(t_i) + s_b^2", zero(e2 - e_sum**2 - (sum(q[i] - a[i] ** 2 for i in range(n)) + sb_p**2)))


def check_lr_equals_bbb() -> None:
    """C2: y = sum_j x_j W_j + b with independent Gaussian W_j, b is Gaussian with mean x mu + mu_b and
    variance sum x_j^2 s_j^2 + s_b^2; that is what LR samples. Checked through the characteristic function
    on n = 2: prod_j E exp(i t x_j W_j) E exp(i t b) = exp(i t m - t^2 v / 2)."""
    print("check_lr_equals_bbb")
    t = sp.symbols("t", real=True)
    x1, x2, m1, m2, s1, s2 = sp.symbols("x1 x2 m1 m2 s1 s2", real=True)

    def cf(m: sp.Expr, s: sp.Expr) -> sp.Expr:  # cf of N(m, s^2) at the scaled argument
        return sp.exp(sp.I * m - s**2 / 2)

    bbb = cf(t * x1 * m1, t * x1 * s1) * cf(t * x2 * m2, t * x2 * s2) * cf(t * mb, t * sb)
    m = x1 * m1 + x2 * m2 + mb
    v = x1**2 * s1**2 + x2**2 * s2**2 + sb**2
    lr = sp.exp(sp.I * t * m - t**2 * v / 2)
    ok("BBB output cf == LR output cf", zero(sp.expand(sp.log(bbb) - sp.log(lr), force=True)))


def check_kl_closed_form() -> None:
    """C1: KL(N(mq, sq^2) || N(mp, sp^2)) = 0.5 ((mq - mp)^2/sp^2 + r^2 - 1 - 2 ln r), r = sq/sp, by
    integrating log q - log p against q; >= 0 with equality iff (mq, sq) = (mp, sp): g(r) = r^2 - 1 - 2 ln r
    has g(1) = 0, g'(1) = 0, g'' = 2 + 2/r^2 > 0."""
    print("check_kl_closed_form")
    z = sp.symbols("z", real=True)
    mq, mp = sp.symbols("m_q m_p", real=True)
    sq, spp, r = sp.symbols("s_q s_p r", positive=True)
    w = mq + sq * z  # q = N(mq, sq^2) written through z ~ N(0, 1)
    log_ratio = -sp.log(sq) + sp.log(spp) - z**2 / 2 + (w - mp) ** 2 / (2 * spp**2)
    # E over z ~ N(0,1): E z = 0, E z^2 = 1.
    poly = sp.Poly(sp.expand(log_ratio), z)
    coeffs = dict(zip((m[0] for m in poly.monoms()), poly.coeffs()))
    expect_val = coeffs.get(0, 0) + coeffs.get(2, 0)
    closed = sp.Rational(1, 2) * ((mq - mp) ** 2 / spp**2 + (sq / spp) ** 2 - 1 - 2 * sp.log(sq / spp))
    ok("E_q[log q - log p] equals the closed form", zero(sp.expand(expect_val - closed, log=True, force=True)))
    g = r**2 - 1 - 2 * sp.log(r)
    ok("g(1) = 0", g.subs(r, 1) == 0)
    ok("g'(1) = 0", sp.diff(g, r).subs(r, 1) == 0)
    ok("g'' = 2 + 2/r^2 > 0", zero(sp.diff(g, r, 2) - (2 + 2 / r**2)))


def check_safe_sqrt_gradient() -> None:
    """C6: d/d rho sqrt(x^2 e^(2 rho) + c) = x^2 e^(2 rho)/sqrt(...) -> 0 as x -> 0 (c >= 0), and
    |d/dx sqrt(x^2 s^2 + c)| <= s: the zero gradient at zero variance is the continuous extension."""
    print("check_safe_sqrt_gradient")
    rho, c = sp.symbols("rho c", nonnegative=True)
    f = sp.sqrt(xx**2 * sp.exp(2 * rho) + c)
    d_rho = sp.diff(f, rho)
    ok("d/drho at c = 0 is |x| e^rho -> 0", zero(sp.simplify(d_rho.subs(c, 0) - sp.Abs(xx) * sp.exp(rho))))
    d_x = sp.diff(f, xx)
    ratio = sp.simplify((d_x / sp.exp(rho)) ** 2)
    # ratio = x^2 e^(2 rho) / (x^2 e^(2 rho) + c) <= 1
    ok("(d/dx / s)^2 = x^2 s^2 / (x^2 s^2 + c) <= 1",
       zero(ratio - xx**2 * sp.exp(2 * rho) / (xx**2 * sp.exp(2 * rho) + c)))


def check_crelu_covariance() -> None:
    """C3 step 4: relu(a) relu(-a) = 0, so Cov(relu(a), relu(-a)) = -E relu(a) E relu(-a) < 0 whenever both
    means are positive: CReLU outputs of one unit are correlated, which the CLT layer ignores."""
    print("check_crelu_covariance")
    a = sp.symbols("a", real=True)
    prod = sp.Max(a, 0) * sp.Max(-a, 0)
    ok("relu(a) relu(-a) = 0 for a > 0", prod.subs(a, 2) == 0)
    ok("relu(a) relu(-a) = 0 for a < 0", prod.subs(a, -3) == 0)
    ok("relu(a) relu(-a) = 0 at a = 0", prod.subs(a, 0) == 0)


def main() -> int:
    check_product_variance()
    check_sum_of_independent_terms()
    check_lr_equals_bbb()
    check_kl_closed_form()
    check_safe_sqrt_gradient()
    check_crelu_covariance()
    if FAILURES:
        print(f"FAILED: {FAILURES}")
        return 1
    print("all bayesian_linear steps hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
