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
from rln_verified._special import inv_softplus, psi, softplus

__all__ = [
    "crelu_moments",
    "inv_softplus",
    "kl_normal",
    "neg_relu_moments",
    "normal_cdf",
    "normal_logcdf",
    "normal_pdf",
    "psi",
    "relu_moments",
    "softplus",
]
