"""Machine checks of the algebra and calculus steps in proofs/special.md. Exits non-zero on failure."""

from __future__ import annotations

import sys

import sympy as sp

t, w, x, y = sp.symbols("t w x y", positive=True)
FAILED: list[str] = []


def check(name: str, ok: bool) -> None:
    print(f"  {'ok ' if ok else 'FAIL'} {name}")
    if not ok:
        FAILED.append(name)


psi = sp.log(1 + t) - t / (1 + t)


def check_atanh_identity() -> None:
    # 1 + t = (1+w)/(1-w) with w = t/(2+t)  =>  log(1+t) = log(1+w) - log(1-w) = 2 atanh(w)
    wt = t / (2 + t)
    check("atanh identity: (1+w)/(1-w) == 1+t", sp.simplify((1 + wt) / (1 - wt) - (1 + t)) == 0)


def check_fraction_identity() -> None:
    wt = t / (2 + t)
    check("t/(1+t) == 2w/(1+w)", sp.simplify(2 * wt / (1 + wt) - t / (1 + t)) == 0)


def check_series_coefficients() -> None:
    # psi == 2w^2/(1+w) + 2w^3 sum_j w^(2j)/(2j+3), compared as Taylor series in t to order 12.
    wt = t / (2 + t)
    series = 2 * wt**2 / (1 + wt) + 2 * wt**3 * sum(wt ** (2 * j) / (2 * j + 3) for j in range(8))
    diff = sp.series(psi - series, t, 0, 12).removeO()
    check("series coefficients match psi to O(t^12)", sp.simplify(diff) == 0)
    # The textbook Taylor coefficients (-1)^k (k-1)/k confirm the leading t^2/2.
    taylor = sp.series(psi, t, 0, 6).removeO()
    expected = sum((-1) ** k * sp.Rational(k - 1, k) * t**k for k in range(2, 6))
    check("Taylor coefficients (-1)^k (k-1)/k", sp.expand(taylor - expected) == 0)


def check_derivative() -> None:
    check("psi'(t) == t/(1+t)^2", sp.simplify(sp.diff(psi, t) - t / (1 + t) ** 2) == 0)


def check_derivative_max() -> None:
    d = t / (1 + t) ** 2
    crit = sp.solve(sp.diff(d, t), t)
    check("psi'' zero only at t = 1", crit == [1])
    check("psi'(1) == 1/4", d.subs(t, 1) == sp.Rational(1, 4))
    check("psi'(0) == 0 and psi' -> 0 at infinity",
          d.subs(t, 0) == 0 and sp.limit(d, t, sp.oo) == 0)


def check_upper_bound() -> None:
    h = t**2 / (2 * (1 + t)) - psi
    check("h(0) == 0", sp.simplify(h.subs(t, 0)) == 0)
    check("h'(t) == t^2/(2(1+t)^2) >= 0", sp.simplify(sp.diff(h, t) - t**2 / (2 * (1 + t) ** 2)) == 0)
    check("log1p(t) - psi == t/(1+t)", sp.simplify(sp.log(1 + t) - psi - t / (1 + t)) == 0)


def check_condition_decreasing() -> None:
    # c(t) = (log1p t + t/(1+t)) / psi(t) decreases on t > 0: checked by sign of c' on a fine grid of
    # rational points (sympy evaluates at 40 digits), since a closed-form sign proof is long.
    c = (sp.log(1 + t) + t / (1 + t)) / psi
    dc = sp.diff(c, t)
    pts = [sp.Rational(k, 100) for k in range(5, 1001, 5)] + [sp.Integer(10) ** k for k in range(1, 30)]
    check("c'(t) < 0 on the grid [0.05, 10] and 10^1..10^29",
          all(sp.N(dc.subs(t, p), 40) < 0 for p in pts))
    check("c(t) -> 1 as t -> oo", sp.limit(c, t, sp.oo) == 1)


def check_condition_values() -> None:
    c = (sp.log(1 + t) + t / (1 + t)) / psi
    check("c(0.1) < 43", sp.N(c.subs(t, sp.Rational(1, 10)), 30) < 43)
    check("c(1) < 6.2", sp.N(c.subs(t, 1), 30) < sp.Rational(62, 10))


def check_softplus_threshold() -> None:
    u64, u32 = sp.Rational(1, 2**53), sp.Rational(1, 2**24)
    check("exp(-37)/37 < u64", sp.N(sp.exp(-37) / 37, 30) < u64)
    check("exp(-17)/17 < u32", sp.N(sp.exp(-17) / 17, 30) < u32)


def check_softplus_ge_sigmoid() -> None:
    # softplus(x) - sigmoid(x) is increasing from its limit 0 at -infinity: derivative = sig - sig(1-sig) = sig^2.
    xr = sp.symbols("xr", real=True)
    spx = sp.log(1 + sp.exp(xr))
    sig = 1 / (1 + sp.exp(-xr))
    check("d/dx (softplus - sigmoid) == sigmoid^2", sp.simplify(sp.diff(spx - sig, xr) - sig**2) == 0)
    check("softplus - sigmoid -> 0 at -infinity", sp.limit(spx - sig, xr, -sp.oo) == 0)


def check_inverse_identity() -> None:
    inv = y + sp.log(1 - sp.exp(-y))
    check("softplus(y + log(1-e^-y)) == y", sp.simplify(sp.log(1 + sp.exp(inv)) - y) == 0)


def check_sigmoid_over_y() -> None:
    # (1 - e^-y)/y <= min(1, 1/y): 1 - e^-y <= y and 1 - e^-y <= 1.
    g = y - (1 - sp.exp(-y))
    check("y - (1 - e^-y) has derivative 1 - e^-y >= 0 and value 0 at 0",
          sp.simplify(sp.diff(g, y) - (1 - sp.exp(-y))) == 0 and g.subs(y, 0) == 0)


def check_inverse_derivative() -> None:
    inv = y + sp.log(1 - sp.exp(-y))
    check("d inv_softplus/dy == 1/(1 - e^-y)", sp.simplify(sp.diff(inv, y) - 1 / (1 - sp.exp(-y))) == 0)


def check_l_identity() -> None:
    xr = sp.symbols("xr", real=True)
    spx = sp.log(1 + sp.exp(xr))
    l_of_y = spx + sp.log(1 - sp.exp(-spx)) - spx  # l = inv(sp(x)) - sp(x)
    check("l(sp(x)) == -sp(-x)", sp.simplify(sp.expand_log(l_of_y + sp.log(1 + sp.exp(-xr)), force=True)) == 0
          or sp.N((l_of_y + sp.log(1 + sp.exp(-xr))).subs(xr, sp.Rational(3, 7)), 40) == 0)


# (eps, tau) of the two compute dtypes, exact.
_COMPUTE_DTYPES = ((sp.Rational(1, 2**23), sp.Rational(1, 2**126)), (sp.Rational(1, 2**52), sp.Rational(1, 2**1022)))


def check_softplus_underflow_constant() -> None:
    # SP-1, L1: eps tau (1 + tau)(2 + eps) <= 2.01 eps tau, i.e. (1 + tau)(2 + eps) <= 2.01, in float32 and float64.
    ok = all((1 + tau) * (2 + e) <= sp.Rational(201, 100) for e, tau in _COMPUTE_DTYPES)
    check("SP-1 underflow term: (1 + tau)(2 + eps) <= 2.01 (float32, float64)", ok)



def check_inverse_constants() -> None:
    # SP-2, L2: K_A = -log(1 - e_A)(1 + eps)/eps with e_A = eps/((1 - 2^-6)(1 - tau)), and
    # K_B = (1 + 2 tau)(1 + eps)/(1 - eps - 2 eps tau) + tau, both <= 1.02 in float32 and float64.
    for e, tau in _COMPUTE_DTYPES:
        e_a = e / ((1 - sp.Rational(1, 2**6)) * (1 - tau))
        k_a = -sp.log(1 - e_a) * (1 + e) / e
        k_b = (1 + 2 * tau) * (1 + e) / (1 - e - 2 * e * tau) + tau
        check(f"K_A = {sp.N(k_a, 8)} <= 1.02 (eps = 2^{sp.log(e, 2)})", sp.N(k_a, 40) <= sp.Rational(102, 100))
        check(f"K_B = {sp.N(k_b, 8)} <= 1.02 (eps = 2^{sp.log(e, 2)})", k_b <= sp.Rational(102, 100))


def check_h_decreasing() -> None:
    # SP-2, L4: h = sigmoid/softplus = d ln softplus/dz; h' = sigma (sp - e^z)/((1 + e^z) sp^2), and
    # sp(z) = log(1 + e^z) < e^z because g(v) = v - log(1 + v) has g(0) = 0 and g'(v) = v/(1 + v) > 0.
    z = sp.symbols("z", real=True)
    v = sp.symbols("v", positive=True)
    spz = sp.log(1 + sp.exp(z))
    sig = 1 / (1 + sp.exp(-z))
    h = sig / spz
    check("h == d ln softplus / dz", sp.simplify(sp.diff(sp.log(spz), z) - h) == 0)
    check("h' == sigma (sp - e^z)/((1 + e^z) sp^2)",
          sp.simplify(sp.diff(h, z) - sig * (spz - sp.exp(z)) / ((1 + sp.exp(z)) * spz**2)) == 0)
    g = v - sp.log(1 + v)
    check("v - log(1 + v): value 0 at 0, derivative v/(1 + v) > 0",
          g.subs(v, 0) == 0 and sp.simplify(sp.diff(g, v) - v / (1 + v)) == 0)
    check("h -> 1 at -infinity and h -> 0 at +infinity",
          sp.limit(h, z, -sp.oo) == 1 and sp.limit(h, z, sp.oo) == 0)


def check_expm1_dominates() -> None:
    # SP-2, L4: for a >= 0, (e^a - 1) - (1 - e^-a) = (e^(a/2) - e^(-a/2))^2 >= 0, so |e^s - 1| <= expm1(a) for |s| <= a.
    a = sp.symbols("a", nonnegative=True)
    diff = (sp.exp(a) - 1) - (1 - sp.exp(-a))
    check("(e^a - 1) - (1 - e^-a) == (e^(a/2) - e^(-a/2))^2",
          sp.simplify(diff - (sp.exp(a / 2) - sp.exp(-a / 2)) ** 2) == 0)


def check_product_expansion() -> None:
    # SP-2, assembly: (1 + r1)(1 + r2)(1 + r3) - 1 has only monomials with coefficient +1, so its absolute
    # value is <= (1 + |r1|)(1 + |r2|)(1 + |r3|) - 1 by the triangle inequality.
    r1, r2, r3 = sp.symbols("r1 r2 r3")
    poly = sp.Poly(sp.expand((1 + r1) * (1 + r2) * (1 + r3) - 1), r1, r2, r3)
    check("(1+r1)(1+r2)(1+r3) - 1: 7 monomials, all with coefficient +1",
          len(poly.coeffs()) == 7 and all(c == 1 for c in poly.coeffs()))


def check_inverse_slope_decreasing() -> None:
    # SP-3: the slope 1/(1 - e^-v) of inv_softplus is decreasing: its derivative is -e^-v/(1 - e^-v)^2 < 0.
    slope = 1 / (1 - sp.exp(-y))
    check("d/dv [1/(1 - e^-v)] == -e^-v/(1 - e^-v)^2",
          sp.simplify(sp.diff(slope, y) + sp.exp(-y) / (1 - sp.exp(-y)) ** 2) == 0)
    xr = sp.symbols("xr", real=True)
    spx = sp.log(1 + sp.exp(xr))
    check("1 - exp(-softplus(x)) == sigmoid(x)",
          sp.simplify(1 - sp.exp(-spx) - 1 / (1 + sp.exp(-xr))) == 0)


if __name__ == "__main__":
    print("proofs/special.md")
    for fn in (check_atanh_identity, check_fraction_identity, check_series_coefficients, check_derivative,
               check_derivative_max, check_upper_bound, check_condition_decreasing, check_condition_values,
               check_softplus_threshold, check_softplus_ge_sigmoid, check_inverse_identity, check_sigmoid_over_y,
               check_inverse_derivative, check_l_identity, check_softplus_underflow_constant,
               check_inverse_constants, check_h_decreasing, check_expm1_dominates, check_product_expansion,
               check_inverse_slope_decreasing):
        fn()
    if FAILED:
        print(f"FAILED: {FAILED}")
        sys.exit(1)
