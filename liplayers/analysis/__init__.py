"""Analysis tools: adversarial attacks (PGD in L2 / L∞, divergence PGD) and decision-boundary curvature."""
from . import attacks, curvature
from .attacks import divergence_pgd, pgd, pgd_attack

__all__ = ["attacks", "curvature", "pgd", "pgd_attack", "divergence_pgd"]
