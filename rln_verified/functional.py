"""Functional kernels: typed, pure, any float dtype, any device.

float16 and bfloat16 inputs are computed in float32 (or better) and cast back.
"""

from rln_verified._gaussian import (
    crelu_moments,
    kl_normal,
    neg_relu_moments,
    normal_cdf,
    normal_logcdf,
    normal_pdf,
    relu_moments,
)
from rln_verified._norm import (
    bayesian_r_layer_norm,
    bayesian_r_layer_norm2d,
    noise_ratio,
    r_layer_norm,
    r_layer_norm2d,
)
from rln_verified._special import inv_softplus, psi, softplus

__all__ = [
    "bayesian_r_layer_norm",
    "bayesian_r_layer_norm2d",
    "crelu_moments",
    "inv_softplus",
    "kl_normal",
    "neg_relu_moments",
    "noise_ratio",
    "normal_cdf",
    "normal_logcdf",
    "normal_pdf",
    "psi",
    "r_layer_norm",
    "r_layer_norm2d",
    "relu_moments",
    "softplus",
]
