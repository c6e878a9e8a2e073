"""Claims of proofs/bayesian_linear.md."""

from rln_verified._registry._types import Claim

_B = "rln_verified."
_BASE = (_B + "BayesianLinear",)
_SAMPLED = (_B + "BBBLinear", _B + "LRLinear")
_CLT = (_B + "CLTLinear", _B + "CLTLinearDet")
_MLP = (_B + "BayesianMLP",)
_CONV_SAMPLED = (_B + "BBBConv2d", _B + "LRConv2d")
_CONV = (*_CONV_SAMPLED, _B + "CLTConv2d")

CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "bayesian_linear", "KL() is the sum over weights and biases of the closed-form Gaussian KL to the "
          "prior (within KL-1's bound plus gamma_n for the sum), agrees with torch.distributions, is >= 0, is "
          "exactly 0 when the posterior equals the prior, and n_params is the number of weight and bias "
          "elements; the same for the conv layers over the kernel.", (*_BASE, _MLP[0], _B + "BayesianConv2d")),
    Claim("C2", "bayesian_linear", "For one posterior and input x, LRLinear's and BBBLinear's outputs are both "
          "N(x mu^T + mu_b, x^2 sigma^2^T + sigma_b^2) per element; LR's sampled std equals "
          "sqrt(x^2 sigma_W^2 + sigma_b^2) within a derived rounding bound; Monte Carlo |z| <= 5.", _SAMPLED),
    Claim("C3", "bayesian_linear", "CLTLinear's propagated mean and variance are the exact moments of W h + b for "
          "independent inputs (float64 reference within gamma_n); after the activation they are the ReLU/CReLU "
          "moments of those, exact when the input is deterministic; a depth-2 ReLU CLT MLP is exact, deeper "
          "(or CReLU) MLPs are approximate (measured <= 1.4% mean, <= 3.6% variance).", _CLT + _MLP),
    Claim("C4", "bayesian_linear", "In MAP mode every layer and BayesianMLP is deterministic and equals, bit for "
          "bit, F.linear with the means (and ReLU/CReLU between layers); the conv layers equal nn.Conv2d with the "
          "means for every padding mode, stride, dilation and groups.", _SAMPLED + _CLT + _MLP + _CONV),
    Claim("C5", "bayesian_linear", "With manual_reset, BBB/LR noise is identical from call to call until "
          "reset_randomness(); without it, every call draws fresh noise (linear and conv).", _SAMPLED + _CONV_SAMPLED),
    Claim("C6", "bayesian_linear", "For float32/float64, every finite rho gives std() in [tiny^(1/4), "
          "max^(1/8)] (> 0, finite), and gradients of output plus KL are finite, including zero inputs, zero "
          "variances and rho = +-max (linear and conv).", _BASE + _SAMPLED + _CLT + _CONV),
    Claim("CV1", "bayesian_linear", "For one posterior and input x, each output element of LRConv2d and BBBConv2d is "
          "N(conv(x, mu) + mu_b, conv(x^2, sigma^2) + sigma_b^2) for every padding mode; LR's sampled std is within "
          "a derived rounding bound of its square root; Monte Carlo |z| <= 5.", _CONV_SAMPLED),
    Claim("CV2", "bayesian_linear", "CLTConv2d's (m, v) are the exact moments of each pre-activation element for "
          "independent inputs when every input element enters each window once (zero padding, or var_h None), "
          "within gamma_n of a float64 evaluation; with reflect/replicate/circular padding and a random input v "
          "omits the covariance 2 mu_a mu_b v_x of repeated border terms (approximate there); after the "
          "activation, the ReLU/CReLU moments of (m, v).", (_B + "CLTConv2d",)),
)
