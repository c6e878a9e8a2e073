"""Claims of proofs/gaussian.md."""

from rln_verified._registry._types import Claim

_F = "rln_verified.functional."
_GAUSS = (_F + "normal_pdf", _F + "normal_cdf", _F + "normal_logcdf")
_RELU = (_F + "relu_moments",)
_CRELU = (_F + "neg_relu_moments", _F + "crelu_moments")
_KL = (_F + "kl_normal",)

CLAIMS: tuple[Claim, ...] = (
    Claim("GAUSS-1", "gaussian", "normal_pdf, normal_cdf and normal_logcdf have relative error <= (16 + 3 z^2) u, "
          "z = (x - mu)/sigma, u of the compute dtype, wherever the result is normal; sigma <= 0 gives NaN.",
          _GAUSS),
    Claim("RELU-1", "gaussian", "For X ~ N(mu, sigma^2), a = mu/sigma, x = -a: E relu(X) = sigma Hh_1(x), "
          "E relu(X)^2 = 2 sigma^2 Hh_2(x), with n Hh_n = Hh_{n-2} - x Hh_{n-1}; the kernel's three variance "
          "forms equal the textbook one.", _RELU),
    Claim("RELU-2", "gaussian", "The computed mean and variance of relu(X) are >= 0 (never NaN) for every "
          "finite mu and sigma >= 0, in every dtype.", _RELU),
    Claim("RELU-3", "gaussian", "sigma = 0 gives (relu(mu), 0) exactly, and the gradients are the finite "
          "one-sided limits (1[mu>0] or 1/2, phi(0) 1[mu=0], 0, 0).", _RELU),
    Claim("RELU-4", "gaussian", "Relative error of relu_moments <= 1e-12 (float64; per branch (1.5 a^2 + 25) u64 "
          "+ 2e-15, 3300 u64, (2 min(a, 40)^2 + 30) u64) and <= u32 + 3300 u64 = 5.96e-8 (float32) for "
          "|mu/sigma| <= 1e3 wherever the true value is normal; computed in float64 for every dtype.", _RELU),
    Claim("RELU-5", "gaussian", "The backward is the closed form dmean = (Phi, phi), dvar = (2 mean Q, "
          "2(sigma Phi - mean phi)), with relative error <= (420 + 7 a^2) u64 (+ u of the dtype).", _RELU),
    Claim("CRELU-1", "gaussian", "neg_relu_moments(mu, s) = relu_moments(-mu, s) exactly, crelu_moments "
          "concatenates both on the last dim, and E relu(X) - E relu(-X) = mu within the RELU-4 bound.", _CRELU),
    Claim("RELU-6", "gaussian", "float32 on CPU: the fused kernel rounds once float64 values of RELU-1's forms (its "
          "exp within 2.7 u64, torch's erfcx table), so RELU-2..5 and CRELU-1 hold for it, it is within 1 ulp of the "
          "eager kernel, and the CLT activation is relu_moments(m, sqrt(clamp_min(v, tiny))) bit for bit.",
          (*_RELU, "rln_verified.functional.crelu_moments", "rln_verified.CLTLinear")),
    Claim("EXP-1", "gaussian", "float32 on CPU: the posterior std is E(clamp(rho, lo, hi)) with the kernel's float32 "
          "exp E within 0.99 ulp of e^x on [lo, hi] (every float32 there enumerated by make verify-thorough); var is "
          "std^2 bit for bit; the rho gradient is "
          "clamp's.", ("rln_verified.BayesianLinear", "rln_verified.BBBLinear", "rln_verified.LRLinear",
                       "rln_verified.CLTLinear")),
    Claim("KL-1", "gaussian", "kl_normal equals 0.5((dmu/sp)^2 + g(sq/sp)), g(r) = r^2 - 1 - 2 ln r, evaluated "
          "as t^2/(1+t) - psi(t) or psi(1/r^2 - 1): >= 0, exactly 0 for equal arguments, relative error "
          "<= 24 u + 3 eps_psi, for 0 <= r <= M^(1/2)/2 (ratios that underflow included) and |dmu/sp| <= M^(1/2)/2 "
          "(M the compute dtype's max).", _KL),
    Claim("KL-2", "gaussian", "float32 on CPU: the fused KL kernel evaluates KL-1's g as t^2/(2+t) - 2 s^3 P(s^2) "
          "(|t| < 1/8) or t - 2 log r in float64 and rounds once: relative error <= u32 + 2^-44, >= 0, 0 at "
          "equality; its gradients are formed in float64 and rounded once.",
          (*_KL, "rln_verified.BayesianLinear")),
)
