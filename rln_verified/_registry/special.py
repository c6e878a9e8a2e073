"""Claims of proofs/special.md."""

from rln_verified._registry._types import Claim

_PSI = ("rln_verified.functional.psi",)
_SP = ("rln_verified.functional.softplus", "rln_verified.functional.inv_softplus")

CLAIMS: tuple[Claim, ...] = (
    Claim("PSI-1", "special", "psi(t) = 2w^2/(1+w) + 2w^3 sum_j w^(2j)/(2j+3), w = t/(2+t), every term positive; "
          "J >= 1 terms leave a relative remainder in [0, w^(2J)/((2J+3)(1-w^2))] for w <= (sqrt 5 - 1)/2.", _PSI),
    Claim("PSI-2", "special", "psi(0) = 0, psi >= 0, psi is increasing, psi(t) <= t^2/2 and psi(t) <= log1p(t) "
          "for t >= 0; the computed psi keeps these up to its rounding.", _PSI),
    Claim("PSI-3", "special", "Relative error of psi <= 44 eps = 9.8e-15 (float64, t in [1e-300, 1e300]) and "
          "<= 10 eps = 1.2e-6 (float32, t in [1e-30, 1e30]) where psi(t) is normal; 0 or subnormal below, never "
          "negative.", _PSI),
    Claim("PSI-4", "special", "psi'(t) = t/(1+t)^2 lies in [0, 1/4] (max at t = 1); the computed gradient is "
          "finite everywhere (t = 0 and t = inf included), never above 1/4, with relative error <= gamma_4 "
          "(~2 eps).", _PSI),
    Claim("SP-1", "special", "softplus is finite for every finite x, returns x exactly above T with "
          "exp(-T) < u T, and has relative error <= 2 eps + u <= 3 eps (plus 2.01 eps tau absolute where "
          "softplus(x) < tau).", _SP),
    Claim("SP-2", "special", "For every positive normal y: |inv_softplus(y) - x| <= Delta (x = y + ln(1-e^-y); "
          "Delta = (1+u_c) eps_c (|l| + 1.02) + u_c |x|, plus u_d (|x| + Delta_c + tau_d) when stored in "
          "float16/bfloat16), and softplus(inv_softplus(y)) = y within (1 + expm1(Delta h(x - Delta)))"
          "(1 + 2 eps_c + u_c)(1 + u_d) - 1 + (2.01 eps_c tau_c (1 + u_d) + u_d tau_d)/y relative, "
          "h = sigmoid/softplus.", _SP),
    Claim("SP-3", "special", "inv_softplus(softplus(x)) = x within A1 + A2 + A3 absolute wherever softplus(x) "
          "is a normal float: A1 = E_y/(1 - exp(-(y - E_y))) for the stored y's error E_y, A2 the inverse's "
          "evaluation error at it, A3 the storage rounding.", _SP),
)
