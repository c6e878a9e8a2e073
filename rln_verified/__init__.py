"""rln_verified: robust and Bayesian normalization and Bayesian linear layers with verified numerics."""

from rln_verified import functional
from rln_verified.claims import CLAIMS, Claim, get_claim

__version__ = "0.1.0"

__all__ = ["CLAIMS", "Claim", "__version__", "functional", "get_claim"]
