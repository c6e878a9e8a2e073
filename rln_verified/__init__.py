"""rln_verified: robust and Bayesian normalization and Bayesian linear layers with verified numerics."""

from rln_verified import functional
from rln_verified._bayesian_conv import BayesianConv2d, BBBConv2d, CLTConv2d, LRConv2d
from rln_verified._bayesian_linear import (
    BayesianLayer,
    BayesianLinear,
    BBBLinear,
    CLTLinear,
    CLTLinearDet,
    CReLU,
    LRLinear,
)
from rln_verified._bayesian_mlp import BayesianMLP
from rln_verified._bayesian_train import elbo, predictive
from rln_verified._norm_layers import BayesianRLayerNorm, BayesianRLayerNorm2d, RLayerNorm, RLayerNorm2d
from rln_verified._to_bayesian import ConversionReport, to_bayesian
from rln_verified._tools import forward_with_uncertainty, replace_norm_layers
from rln_verified.claims import CLAIMS, Claim, get_claim

__version__ = "0.1.0"

__all__ = [
    "CLAIMS",
    "BBBConv2d",
    "BBBLinear",
    "BayesianConv2d",
    "BayesianLayer",
    "BayesianLinear",
    "BayesianMLP",
    "BayesianRLayerNorm",
    "BayesianRLayerNorm2d",
    "CLTConv2d",
    "CLTLinear",
    "CLTLinearDet",
    "CReLU",
    "Claim",
    "ConversionReport",
    "LRConv2d",
    "LRLinear",
    "RLayerNorm",
    "RLayerNorm2d",
    "__version__",
    "elbo",
    "forward_with_uncertainty",
    "functional",
    "get_claim",
    "predictive",
    "replace_norm_layers",
    "to_bayesian",
]
