"""Machine checks of the algebra and calculus steps in proofs/norm.md. Exits non-zero on failure."""

from __future__ import annotations

import sys

import sympy as sp

FAILED: list[str] = []


def check(name: str, ok: bool) -> None:
    print(f"  {'ok ' if ok else 'FAIL'} {name}")
    if not ok:
        FAILED.append(name)


def reflect(j: int, n: int) -> int:
    return 1 if j == -1 else (n - 2 if j == n else j)


def box(n: int) -> sp.Matrix:
    b = sp.zeros(n, n)
    for i in range(n):
        for j in (i - 1, i, i + 1):
            b[i, reflect(j, n)] += sp.Rational(1, 3)
    return b


def check_reuse_counts() -> None:
    ok = True
    for n in range(2, 9):
        w = [sum(box(n)[i, j] for i in range(n)) for j in range(n)]
        if n == 2:
            expect = [1, 1]
        elif n == 3:
            expect = [sp.Rational(2, 3), sp.Rational(5, 3), sp.Rational(2, 3)]
        else:
            expect = [sp.Rational(2, 3), sp.Rational(4, 3)] + [1] * (n - 4) + [sp.Rational(4, 3), sp.Rational(2, 3)]
        ok &= w == expect
    check("reuse weights w = B^T 1 for n = 2..8", ok)


def check_quad_form() -> None:
    # nu = x^T (diag(w) - B^T B) x / M equals the mean window variance, symbolically for n = 5.
    n = 5
    xs = sp.symbols(f"x0:{n}")
    x = sp.Matrix(xs)
    b = box(n)
    w = [sum(b[i, j] for i in range(n)) for j in range(n)]
    q = sp.diag(*w) - b.T * b
    local = 0
    for i in range(n):
        win = [xs[reflect(j, n)] for j in (i - 1, i, i + 1)]
        m = sum(win) / 3
        local += sum((z - m) ** 2 for z in win) / 3
    check("sum_i L_i == x^T Q x (n = 5)", sp.expand(local - (x.T * q * x)[0]) == 0)


def check_centred_max() -> None:
    # For centred x, x_1^2 <= (M-1)/M sum x_j^2: with x_1 = -(sum of the rest), Cauchy-Schwarz on M-1 terms.
    m = sp.symbols("M", positive=True)
    a, _s2 = sp.symbols("a s2", positive=True)  # a = |x_1|, s2 = sum_{j>1} x_j^2 >= a^2/(M-1)
    lhs = a**2
    rhs = (m - 1) / m * (a**2 + a**2 / (m - 1))
    check("equality case of x_1^2 <= (M-1)/M |x|^2", sp.simplify(lhs - rhs) == 0)


def check_scale_invariance() -> None:
    x, mu, v, eps, s, nu = sp.symbols("x mu v eps s nu", positive=True)
    y = (x - mu) / sp.sqrt(v + eps)
    ys = (s * x - s * mu) / sp.sqrt(s**2 * v + s**2 * eps)
    check("x_hat invariant under (x, eps) -> (s x, s^2 eps)", sp.simplify(y - ys) == 0)
    check("r invariant under the same scaling", sp.simplify(nu / (v + eps) - s**2 * nu / (s**2 * v + s**2 * eps)) == 0)


def check_inflation_derivative() -> None:
    t, alpha, lam = sp.symbols("t alpha lambda", positive=True)
    psi = sp.log(1 + t) - t / (1 + t)
    f = sp.exp(alpha * psi)
    bprime = lam * sp.diff(f, t) / f**2
    check("Bayesian: lambda f'/f^2 == lambda alpha psi'(t)/f",
          sp.simplify(bprime - lam * alpha * t / (1 + t) ** 2 / f) == 0)
    g = 1 + t
    check("plain: lambda f'/f^2 == lambda/(1+t)^2", sp.simplify(lam * sp.diff(g, t) / g**2 - lam / (1 + t) ** 2) == 0)


def check_grad_r() -> None:
    # r = (x^T Q x / M) / (x_c^T x_c / M + eps) on centred coordinates: gradient (2/(M(v+eps)))(Q x - r x).
    n = 3
    xs = sp.symbols(f"y0:{n}")
    x = sp.Matrix(xs)
    qs = sp.symbols(f"q0:{n * n}")
    q = sp.Matrix(n, n, qs)
    q = (q + q.T) / 2
    eps, m = sp.symbols("eps M", positive=True)
    v = (x.T * x)[0] / m
    nu = (x.T * q * x)[0] / m
    r = nu / (v + eps)
    grad = sp.Matrix([sp.diff(r, z) for z in xs])
    expect = (2 / (m * (v + eps))) * (q * x - r * x)
    check("grad r == (2/(M(v+eps)))(Q x - r x)", sp.simplify(grad - expect) == sp.zeros(n, 1))


def check_n3_maximization() -> None:
    a, w, c = sp.symbols("a w c", nonnegative=True)
    g = 1 - a**2 + ((1 - w) * a + c) ** 2
    # concave in a for 0 < w <= 1: the a^2 coefficient is (1-w)^2 - 1 <= 0
    check("a^2 coefficient (1-w)^2 - 1 <= 0", sp.expand(sp.Poly(g, a).coeff_monomial(a**2) - ((1 - w) ** 2 - 1)) == 0)
    # sup over a of 2(1-w)c a - w(2-w) a^2 == (1-w)^2 c^2/(w(2-w)); with c = 2 b L w the total is 4 b^2 L^2 w/(2-w)
    b, lam = sp.symbols("b Lambda", positive=True)
    cc = 2 * b * lam * w
    total = cc**2 + (1 - w) ** 2 * cc**2 / (w * (2 - w))
    check("c^2 (1 + (1-w)^2/(w(2-w))) == 4 b^2 Lambda^2 w/(2-w)",
          sp.simplify(total - 4 * b**2 * lam**2 * w / (2 - w)) == 0)
    check("w/(2-w) <= 1 on [0, 1]", sp.simplify(1 - w / (2 - w) - 2 * (1 - w) / (2 - w)) == 0)


def check_shift() -> None:
    xs = sp.symbols("x0:4")
    c = sp.symbols("c")
    mu = sum(xs) / 4
    mu_c = sum(z + c for z in xs) / 4
    check("x_c(x + c) == x_c(x)", all(sp.simplify((z + c - mu_c) - (z - mu)) == 0 for z in xs))


def check_scale() -> None:
    v, eps, a, nu = sp.symbols("v eps a nu", positive=True)
    check("r(a x; eps) == r(x; eps/a^2)", sp.simplify(a**2 * nu / (a**2 * v + eps) - nu / (v + eps / a**2)) == 0)


def check_u_monotone() -> None:
    t, alpha = sp.symbols("t alpha", positive=True)
    psi = sp.log(1 + t) - t / (1 + t)
    u = 1 - sp.exp(-2 * alpha * psi)
    check("du/dt == 2 alpha psi'(t) exp(-2 alpha psi) >= 0",
          sp.simplify(sp.diff(u, t) - 2 * alpha * t / (1 + t) ** 2 * sp.exp(-2 * alpha * psi)) == 0)
    check("u == 1 - 1/f^2", sp.simplify(u - (1 - 1 / sp.exp(alpha * psi) ** 2)) == 0)


def check_lambda_map() -> None:
    raw, lo, hi = sp.symbols("raw lo hi", real=True)
    lam = lo + (hi - lo) * (1 + sp.sin(raw)) / 2
    check("d lambda/d raw == (hi-lo) cos(raw)/2", sp.simplify(sp.diff(lam, raw) - (hi - lo) * sp.cos(raw) / 2) == 0)
    check("lambda(raw) at sin = -1, 1 is lo, hi",
          sp.simplify(lam.subs(sp.sin(raw), -1) - lo) == 0 and sp.simplify(lam.subs(sp.sin(raw), 1) - hi) == 0)


def check_sum_invariant() -> None:
    xs = sp.symbols("x0:4")
    g = sp.Function("g")(*xs)
    mu = sum(xs) / 4
    total = sum((z - mu) * g for z in xs)
    check("sum_i x_c_i g(x) == 0 identically", sp.simplify(total) == 0)


def check_phi_maximum() -> None:
    # N3: ||(S - r) n||^2 <= Lambda q - 2 q^2 rho + q^2 rho^2 (S^2 <= Lambda S, r = q rho); its max over
    # q in [0, Lambda] is Lambda^2/(4 rho(2-rho)) at the vertex q* = Lambda/(2 rho(2-rho)) when q* <= Lambda,
    # else Lambda^2 (1-rho)^2 at q = Lambda.
    q, lam, rho = sp.symbols("q Lambda rho", positive=True)
    g = lam * q - 2 * q**2 * rho + q**2 * rho**2
    (vertex,) = sp.solve(sp.diff(g, q), q)
    check("vertex q* == Lambda/(2 rho (2-rho))", sp.simplify(vertex - lam / (2 * rho * (2 - rho))) == 0)
    top = lam**2 / (4 * rho * (2 - rho))
    check("value at q* == Lambda^2/(4 rho(2-rho))", sp.simplify(g.subs(q, vertex) - top) == 0)
    check("value at q = Lambda == Lambda^2 (1-rho)^2", sp.simplify(g.subs(q, lam) - lam**2 * (1 - rho) ** 2) == 0)


def check_k_sharp() -> None:
    # N3: with W = 2 b Lambda rho phi(rho), W^2/(rho(2-rho)) <= b^2 Lambda^2 on both branches of phi.
    b, lam, rho = sp.symbols("b Lambda rho", positive=True)
    w1 = 2 * b * lam * rho / (2 * sp.sqrt(rho * (2 - rho)))
    check("branch rho(2-rho) >= 1/2: W^2/(rho(2-rho)) == b^2 Lambda^2/(2-rho)^2",
          sp.simplify(w1**2 / (rho * (2 - rho)) - b**2 * lam**2 / (2 - rho) ** 2) == 0)
    w2 = 2 * b * lam * rho * (1 - rho)
    h = sp.simplify(w2**2 / (rho * (2 - rho)) / (b**2 * lam**2))
    r0 = 1 - 1 / sp.sqrt(2)  # rho(2-rho) = 1/2
    check("rho(2-rho) == 1/2 at rho = 1 - 1/sqrt(2)", sp.simplify(r0 * (2 - r0) - sp.Rational(1, 2)) == 0)
    top = sp.maximum(h, rho, sp.Interval(0, r0))
    check("branch rho(2-rho) < 1/2: max W^2/(rho(2-rho)) = (6 - 4 sqrt 2) b^2 Lambda^2 <= 0.35 b^2 Lambda^2",
          sp.simplify(top - (6 - 4 * sp.sqrt(2))) == 0 and float(top) <= 0.35)


if __name__ == "__main__":
    print("proofs/norm.md")
    for fn in (check_reuse_counts, check_quad_form, check_centred_max, check_scale_invariance,
               check_inflation_derivative, check_grad_r, check_n3_maximization, check_shift, check_scale,
               check_u_monotone, check_lambda_map, check_sum_invariant, check_phi_maximum, check_k_sharp):
        fn()
    if FAILED:
        print(f"FAILED: {FAILED}")
        sys.exit(1)
