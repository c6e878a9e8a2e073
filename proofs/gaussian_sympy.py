"""Machine checks of the algebra, calculus and numeric constants in proofs/gaussian.md.

Run as a plain script; exits non-zero when a step fails. Each function names the proof step it checks.
"""

from __future__ import annotations

import sys

import mpmath
import sympy as sp

a, x, t, r, s = sp.symbols("a x t r s", real=True)
mu, sq, sp_, mq, mp_ = sp.symbols("mu sigma_q sigma_p mu_q mu_p", real=True)
sigma = sp.symbols("sigma", positive=True)
P, Q, phi, R = sp.symbols("P Q phi R", positive=True)

phi_f = sp.exp(-(x**2) / 2) / sp.sqrt(2 * sp.pi)
Q_f = sp.erfc(x / sp.sqrt(2)) / 2  # upper tail Q(x) = 1 - Phi(x)

FAILURES: list[str] = []


def ok(name: str, cond: bool) -> None:
    print(f"  [{'ok' if cond else 'FAIL'}] {name}")
    if not cond:
        FAILURES.append(name)


def zero(expr: sp.Expr) -> bool:
    return bool(sp.simplify(sp.expand(expr)) == 0)


def hh(n: int) -> sp.Expr:
    """Hh_n(x) = int_x^oo (t - x)^n / n! phi(t) dt, by direct integration."""
    tt = sp.symbols("tt", real=True)
    integrand = (tt - x) ** n / sp.factorial(n) * sp.exp(-(tt**2) / 2) / sp.sqrt(2 * sp.pi)
    return sp.simplify(sp.integrate(integrand, (tt, x, sp.oo)))


def check_hh_closed_forms() -> None:
    """RELU-1 step 1: Hh_0 = Q, Hh_1 = phi - x Q, 2 Hh_2 = (1 + x^2) Q - x phi."""
    print("check_hh_closed_forms")
    ok("Hh_0 = Q", zero(hh(0) - Q_f))
    ok("Hh_1 = phi - x Q", zero(hh(1) - (phi_f - x * Q_f)))
    ok("2 Hh_2 = (1 + x^2) Q - x phi", zero(2 * hh(2) - ((1 + x**2) * Q_f - x * phi_f)))


def check_recurrence() -> None:
    """RELU-1 step 2: n Hh_n = Hh_{n-2} - x Hh_{n-1} (n = 1..5, Hh_{-1} = phi) and Hh_n' = -Hh_{n-1}."""
    print("check_recurrence")
    h = {-1: phi_f}
    for n in range(0, 6):
        h[n] = hh(n)
    for n in range(1, 6):
        ok(f"{n} Hh_{n} = Hh_{n - 2} - x Hh_{n - 1}", zero(n * h[n] - (h[n - 2] - x * h[n - 1])))
    for n in range(0, 6):
        ok(f"d/dx Hh_{n} = -Hh_{n - 1}", zero(sp.diff(h[n], x) + h[n - 1]))


def check_moments() -> None:
    """RELU-1 step 3: E relu(X) = sigma Hh_1(-a), E relu(X)^2 = 2 sigma^2 Hh_2(-a), in Phi/phi form."""
    print("check_moments")
    y = sp.symbols("y", real=True)
    dens = sp.exp(-((y - mu) ** 2) / (2 * sigma**2)) / (sigma * sp.sqrt(2 * sp.pi))
    m1 = sp.integrate(y * dens, (y, 0, sp.oo))
    m2 = sp.integrate(y**2 * dens, (y, 0, sp.oo))
    h1 = (phi_f - x * Q_f).subs(x, -mu / sigma)
    h2 = (((1 + x**2) * Q_f - x * phi_f) / 2).subs(x, -mu / sigma)
    ok("E relu(X) = sigma Hh_1(-mu/sigma)", zero(sp.simplify(m1 - sigma * h1)))
    ok("E relu(X)^2 = 2 sigma^2 Hh_2(-mu/sigma)", zero(sp.simplify(m2 - 2 * sigma**2 * h2)))
    Phi_a = 1 - Q_f.subs(x, a)
    phi_a = phi_f.subs(x, a)
    ok("sigma Hh_1(-a) = sigma (a Phi(a) + phi(a))", zero((phi_f - x * Q_f).subs(x, -a) - (a * Phi_a + phi_a)))
    ok(
        "2 Hh_2(-a) = (a^2 + 1) Phi(a) + a phi(a)",
        zero(((1 + x**2) * Q_f - x * phi_f).subs(x, -a) - ((a**2 + 1) * Phi_a + a * phi_a)),
    )


def check_variance_forms() -> None:
    """RELU-1 step 4: the three variance forms used by the kernel."""
    print("check_variance_forms")
    textbook = (a**2 + 1) * P + a * phi - (a * P + phi) ** 2
    rearranged = P + a**2 * P * Q - a * phi * (P - Q) - phi**2
    ok("a >= 0 form equals textbook (P + Q = 1)", zero((textbook - rearranged).subs(P, 1 - Q)))
    # a = -x < 0: Phi(a) = Q(x) = phi R.
    mean_n = phi * (1 - x * R)
    e2_n = phi * ((1 + x**2) * R - x)
    ok("mean/sigma = phi (1 - x R) when Phi(a) = phi R, a = -x", zero((a * P + phi).subs({a: -x, P: phi * R}) - mean_n))
    ok("E2/sigma^2 = phi((1+x^2)R - x)", zero(((a**2 + 1) * P + a * phi).subs({a: -x, P: phi * R}) - e2_n))
    # Tail: with Hh_1 = phi r0 r1 and Hh_2 = Hh_1 r2, 2 Hh_2 - Hh_1^2 = Hh_1 (2 r2 - Hh_1).
    r0, r1, r2 = sp.symbols("r0 r1 r2", positive=True)
    h1 = phi * r0 * r1
    ok("2 Hh_2 - Hh_1^2 = Hh_1 (2 r_2 - Hh_1)", zero(2 * h1 * r2 - h1**2 - h1 * (2 * r2 - h1)))


def check_gradients() -> None:
    """RELU-5: the closed-form partial derivatives of mean and var."""
    print("check_gradients")
    m, sg = sp.symbols("m s", positive=True)
    aa = m / sg
    Phi = (1 + sp.erf(aa / sp.sqrt(2))) / 2
    ph = sp.exp(-(aa**2) / 2) / sp.sqrt(2 * sp.pi)
    mean = m * Phi + sg * ph
    e2 = sg**2 * ((aa**2 + 1) * Phi + aa * ph)
    var = e2 - mean**2
    ok("d mean/d mu = Phi(a)", zero(sp.diff(mean, m) - Phi))
    ok("d mean/d sigma = phi(a)", zero(sp.diff(mean, sg) - ph))
    ok("d E2/d mu = 2 mean", zero(sp.diff(e2, m) - 2 * mean))
    ok("d E2/d sigma = 2 sigma Phi(a)", zero(sp.diff(e2, sg) - 2 * sg * Phi))
    ok("d var/d mu = 2 mean (1 - Phi(a))", zero(sp.diff(var, m) - 2 * mean * (1 - Phi)))
    ok("d var/d sigma = 2 (sigma Phi - mean phi)", zero(sp.diff(var, sg) - 2 * (sg * Phi - mean * ph)))


def check_sigma_zero_limits() -> None:
    """RELU-3: the sigma -> 0+ limits of the moments and of the gradients."""
    print("check_sigma_zero_limits")
    sg = sp.symbols("s", positive=True)
    for mval, want in ((sp.Integer(2), 2), (sp.Integer(-2), 0)):
        aa = mval / sg
        Phi = (1 + sp.erf(aa / sp.sqrt(2))) / 2
        ph = sp.exp(-(aa**2) / 2) / sp.sqrt(2 * sp.pi)
        mean = mval * Phi + sg * ph
        var = sg**2 * ((aa**2 + 1) * Phi + aa * ph) - mean**2
        ok(f"mu={mval}: mean -> relu(mu)", sp.limit(mean, sg, 0, "+") == want)
        ok(f"mu={mval}: var -> 0", sp.limit(var, sg, 0, "+") == 0)
        ok(f"mu={mval}: phi(a) -> 0 (d mean/d sigma)", sp.limit(ph, sg, 0, "+") == 0)
        ok(f"mu={mval}: Phi(a) -> 1[mu > 0]", sp.limit(Phi, sg, 0, "+") == (1 if want else 0))


def check_kl() -> None:
    """KL-1: closed form, the two g identities, psi <= t^2/(2(1+t)), and t's factored form."""
    print("check_kl")
    y = sp.symbols("y", real=True)
    sqp, spp = sp.symbols("sq sp", positive=True)
    logq = -((y - mq) ** 2) / (2 * sqp**2) - sp.log(sqp) - sp.log(2 * sp.pi) / 2
    logp = -((y - mp_) ** 2) / (2 * spp**2) - sp.log(spp) - sp.log(2 * sp.pi) / 2
    dens = sp.exp(logq)
    kl = sp.integrate(sp.expand(dens * (logq - logp)), (y, -sp.oo, sp.oo))
    rr = sqp / spp
    closed = ((mq - mp_) / spp) ** 2 / 2 + (rr**2 - 1 - 2 * sp.log(rr)) / 2
    ok("KL = ((mq-mp)/sp)^2/2 + g(r)/2", zero(sp.simplify(sp.expand_log(kl - closed, force=True))))
    tp = sp.symbols("tp", nonnegative=True)
    psi = sp.log(1 + tp) - tp / (1 + tp)
    ok("t - log1p t = t^2/(1+t) - psi(t)", zero(tp - sp.log(1 + tp) - (tp**2 / (1 + tp) - psi)))
    rp = sp.symbols("rp", positive=True)
    g = rp**2 - 1 - 2 * sp.log(rp)
    ok("g(r) = t - log1p(t), t = r^2 - 1", zero(sp.expand_log(g - ((rp**2 - 1) - sp.log(rp**2)), force=True)))
    psi_s = psi.subs(tp, 1 / rp**2 - 1)
    ok("g(r) = psi(1/r^2 - 1)", zero(sp.expand_log(sp.simplify(g - psi_s), force=True)))
    h = tp**2 / (2 * (1 + tp)) - psi
    ok("h(0) = 0 for h = t^2/(2(1+t)) - psi", h.subs(tp, 0) == 0)
    ok("h'(t) = t^2/(2(1+t)^2) >= 0", zero(sp.diff(h, tp) - tp**2 / (2 * (1 + tp) ** 2)))
    ok("((sq-sp)/sp)((sq+sp)/sp) = r^2 - 1", zero(((sqp - spp) / spp) * ((sqp + spp) / spp) - (rr**2 - 1)))
    ok("((sp-sq)/sq)((sp+sq)/sq) = 1/r^2 - 1", zero(((spp - sqp) / sqp) * ((spp + sqp) / sqp) - (1 / rr**2 - 1)))


# ---- numeric constants (mpmath, 60 digits) ---------------------------------------------------------

X_SPLIT = 4.5
CF_DEPTH = 32


def _cf(xv: mpmath.mpf, seed: mpmath.mpf, depth: int) -> tuple[mpmath.mpf, mpmath.mpf, mpmath.mpf]:
    rr = seed
    out: dict[int, mpmath.mpf] = {}
    for n in range(depth, 0, -1):
        rr = 1 / (xv + n * rr)
        out[n - 1] = rr
    return out[0], out[1], out[2]


def check_cf_truncation() -> None:
    """RELU-4 step T: r_{K+1} lies in [x/(x^2 + K + 2), 1/x]; the K-level map is monotone in the seed,
    so the convergents from the two ends bracket both the true ratios and the kernel's seed. The bracket
    width is below 1e-15 (relative) for x >= X_SPLIT and decreases in x."""
    print("check_cf_truncation")
    with mpmath.workdps(200):
        kk = CF_DEPTH
        widths = []
        for xv in (4.5, 4.75, 5.0, 6.0, 8.0, 12.0, 20.0, 40.0):
            xm = mpmath.mpf(xv)
            lo_s, hi_s = xm / (xm**2 + kk + 2), 1 / xm
            seed = (mpmath.sqrt(xm**2 + 4 * (kk + 1)) - xm) / (2 * (kk + 1))
            ok(f"x={xv}: kernel seed inside the bracket", bool(lo_s < seed < hi_s))
            lo, hi = _cf(xm, lo_s, kk), _cf(xm, hi_s, kk)
            w = max(abs(lv - hv) / lv for lv, hv in zip(lo, hi))
            widths.append(w)
            # The true ratios lie in the bracket too.
            q = mpmath.ncdf(-xm)
            ph = mpmath.npdf(xm)
            h1 = ph - xm * q
            h2 = ((1 + xm**2) * q - xm * ph) / 2
            true = (q / ph, h1 / q, h2 / h1)
            inside = all(min(lv, hv) <= tv <= max(lv, hv) for lv, hv, tv in zip(lo, hi, true))
            ok(f"x={xv}: true r0, r1, r2 inside bracket (width {float(w):.2e})", inside)
        ok("bracket width <= 1e-15 at x = X_SPLIT", widths[0] <= 1e-15)
        ok("bracket width decreases in x", all(b <= c for b, c in zip(widths[1:], widths[:-1])))


def check_cf_rounding() -> None:
    """RELU-4 step F: rounding in r_{n-1} = fl(1/fl(x + n r_n)) is amplified by A_{n-1} = 2 + c_n A_n with
    c_n = n r_n r_{n-1} < 1; A_0, A_1, A_2 <= 12 for x >= X_SPLIT."""
    print("check_cf_rounding")
    with mpmath.workdps(30):
        worst = mpmath.mpf(0)
        for xv in (4.5, 5.0, 6.0, 10.0, 40.0):
            xm = mpmath.mpf(xv)
            rr = (mpmath.sqrt(xm**2 + 4 * (CF_DEPTH + 1)) - xm) / (2 * (CF_DEPTH + 1))
            amp = mpmath.mpf(0)
            amps = {}
            for n in range(CF_DEPTH, 0, -1):
                rn = 1 / (xm + n * rr)
                c = n * rr * rn
                amp = 2 + c * amp
                amps[n - 1] = amp
                rr = rn
            worst = max(worst, amps[0], amps[1], amps[2])
        print(f"    max A_0..A_2 = {float(worst):.3f}")
        ok("A_0, A_1, A_2 <= 12", worst <= 12)


def check_cancellation() -> None:
    """RELU-4 step D: cancellation factors of the direct branch, on a grid and at the endpoints
    (each factor is increasing in |a| over its interval, which the grid also confirms)."""
    print("check_cancellation")
    with mpmath.workdps(40):
        # a >= 0: sum of |terms| / value for P + a^2 P Q - a phi (P - Q) - phi^2.
        worst_pos = mpmath.mpf(0)
        for i in range(0, 4001):
            av = mpmath.mpf(i) / 100
            q = mpmath.ncdf(-av)
            p = 1 - q
            ph = mpmath.npdf(av)
            terms = (p, av**2 * p * q, -av * ph * (p - q), -(ph**2))
            worst_pos = max(worst_pos, sum(abs(v) for v in terms) / sum(terms))
        print(f"    a >= 0: max factor {float(worst_pos):.4f}")
        ok("a >= 0 variance cancellation factor <= 2", worst_pos <= 2)
        prev = (mpmath.mpf(0), mpmath.mpf(0))
        mono = True
        for i in range(1, 451):
            xv = mpmath.mpf(i) / 100
            rm = mpmath.ncdf(-xv) / mpmath.npdf(xv)
            f1 = xv * rm / (1 - xv * rm)
            f2 = (1 + xv**2) * rm / ((1 + xv**2) * rm - xv)
            mono = mono and f1 >= prev[0] and f2 >= prev[1]
            prev = (f1, f2)
        print(f"    a in [-4.5, 0): mean factor {float(prev[0]):.2f}, E2 factor {float(prev[1]):.2f}")
        ok("factors increase on (0, 4.5]", mono)
        ok("mean cancellation factor (x R)/(1 - x R) <= 23 on (0, 4.5]", prev[0] <= 23)
        ok("E2 cancellation factor <= 265 on (0, 4.5]", prev[1] <= 265)
        # RELU-5: dvar/dsigma / 2 sigma = Phi - m phi, m = a Phi + phi; factor (Phi + m phi)/(Phi - m phi).
        worst_g = mpmath.mpf(0)
        for i in range(-4500, 4001):
            av = mpmath.mpf(i) / 100
            cdf, ph = mpmath.ncdf(av), mpmath.npdf(av)
            m = av * cdf + ph
            worst_g = max(worst_g, (cdf + m * ph) / (cdf - m * ph))
        print(f"    dvar/dsigma: max factor {float(worst_g):.4f} on a in [-45, 40]")
        ok("dvar/dsigma cancellation factor <= 2.2", worst_g <= 2.2)


def check_condition_numbers() -> None:
    """GAUSS-1 and RELU-4: kappa = |z f'(z)/f(z)| <= z^2 + 2 for pdf, cdf, logcdf (grid on [-40, 40]); the
    final subtraction of v_neg (E2/sigma^2 - m^2) cancels by at most 2 on a in [-4.5, 0]."""
    print("check_condition_numbers")
    with mpmath.workdps(60):
        worst = mpmath.mpf(0)
        for i in range(-4000, 4001, 5):
            z = mpmath.mpf(i) / 100
            ph, cdf = mpmath.npdf(z), mpmath.ncdf(z)
            logc = mpmath.log1p(-mpmath.ncdf(-z)) if z > 0 else mpmath.log(cdf)
            kap = (z * z, abs(z * ph / cdf), abs(z * ph / (cdf * logc)) if z != 0 else mpmath.mpf(0))
            worst = max(worst, max(k / (z * z + 2) for k in kap))
        ok("kappa <= z^2 + 2 (pdf, cdf, logcdf)", worst <= 1)
        worst_v = mpmath.mpf(0)
        for i in range(0, 451):
            xv = mpmath.mpf(i) / 100
            q, ph = mpmath.ncdf(-xv), mpmath.npdf(xv)
            h1 = ph - xv * q
            e2 = (1 + xv**2) * q - xv * ph
            worst_v = max(worst_v, (e2 + h1 * h1) / (e2 - h1 * h1))
        print(f"    v_neg final subtraction factor {float(worst_v):.4f}")
        ok("v_neg final subtraction factor <= 2", worst_v <= 2)
    sv = sp.symbols("sv", nonnegative=True)
    psi_s = sp.log(1 + sv) - sv / (1 + sv)
    h2 = psi_s - sv**2 / (2 * (1 + sv) ** 2)
    ok("KL-1: psi(s) >= s^2/(2(1+s)^2): h2(0) = 0", h2.subs(sv, 0) == 0)
    ok("KL-1: h2'(s) = s^2/(1+s)^3 >= 0 (so kappa_psi <= 2)", zero(sp.diff(h2, sv) - sv**2 / (1 + sv) ** 3))


def check_clamp() -> None:
    """RELU-4 step C: at a = 40, Phi(a) rounds to 1 and phi(a) to 0 in float64 (so clamping is exact)."""
    print("check_clamp")
    with mpmath.workdps(40):
        ok("Q(40) < 2^-54 (Phi(40) rounds to 1)", mpmath.ncdf(-40) < mpmath.mpf(2) ** -54)
        ok("phi(40) < 2^-1075 (rounds to 0)", mpmath.npdf(40) < mpmath.mpf(2) ** -1075)


def main() -> int:
    for f in (
        check_hh_closed_forms,
        check_recurrence,
        check_moments,
        check_variance_forms,
        check_gradients,
        check_sigma_zero_limits,
        check_kl,
        check_cf_truncation,
        check_cf_rounding,
        check_cancellation,
        check_condition_numbers,
        check_clamp,
    ):
        f()
    if FAILURES:
        print(f"FAILED: {len(FAILURES)} step(s): {FAILURES}")
        return 1
    print("all gaussian proof steps checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
