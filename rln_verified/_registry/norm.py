"""Claims of proofs/norm.md."""

from rln_verified._registry._types import Claim

_L = (
    "rln_verified.RLayerNorm",
    "rln_verified.BayesianRLayerNorm",
    "rln_verified.RLayerNorm2d",
    "rln_verified.BayesianRLayerNorm2d",
)
_B = ("rln_verified.BayesianRLayerNorm", "rln_verified.BayesianRLayerNorm2d")

CLAIMS: tuple[Claim, ...] = (
    Claim("N0", "norm", "0 <= r <= Lambda = lambda_max(P Q P) <= c_max/|W| (4/3 along an axis of length >= 4, "
          "16/9 for 3x3), where c_max counts reflect-padding reuse.", _L),
    Claim("N1", "norm", "|y - beta| <= |gamma| sqrt(M - 1) for every finite input.", _L),
    Claim("N2", "norm", "For every finite input up to the dtype's max the output is finite and matches a float64 "
          "evaluation of the formula within the derived tolerance.", _L),
    Claim("N3", "norm", "||dy/dx||_2 <= K max|gamma| / sqrt(v + eps), K = sqrt(1 + b^2 Lambda^2), "
          "b = alpha lambda_max / 4 (Bayesian) or lambda_max (plain).", _L),
    Claim("N4", "norm", "y(x + c) = y(x) and u(x + c) = u(x), within a tolerance from ulp(|c|)/sigma.", _L),
    Claim("N5", "norm", "y(a x) = y(x) for a > 0 when v >> eps, within a derived tolerance.", _L),
    Claim("N6", "norm", "With alpha = 0 the Bayesian layers equal F.layer_norm / F.group_norm(C groups).", _B),
    Claim("N7", "norm", "sigma_eff >= sigma; u in [0, 1) and nondecreasing in r; u rises with added noise.", _B),
    Claim("N8", "norm", "lambda stays in [lambda_min, lambda_max] after any optimizer step and its gradient is "
          "nonzero whenever r > 0.", _L),
    Claim("N9", "norm", "The output and gradient for sample i do not depend on any other sample, even NaN or Inf.",
          _L),
    Claim("N10", "norm", "The gradient of sum(y) with respect to x is 0 when gamma is constant.", _L),
    Claim("N11", "norm", "float32 on CPU (the fused kernel): y, u and every gradient are the float64 values rounded "
          "once to float32, up to a 2^-46 (M + 8)(1 + A/sigma)-sized float64 error.", _L),
)
