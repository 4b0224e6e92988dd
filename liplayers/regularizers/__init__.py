"""Regularizers: Parseval, ISO (partial isometry), Jacobian, Fisher-spectrum."""
# --- Parseval penalty and retraction (issue 4): liplayers/regularizers/parseval.py ---
from .parseval import ParsevalRetraction, parseval_penalty, parseval_retraction_, parseval_weights, register_parseval_retraction
# --- ISO and Jacobian regularizers (issue 6): liplayers/regularizers/iso.py, jacobian.py ---
from .iso import ISOLoss, iso_penalty, iso_penalty_stereographic, iso_schedule, pullback_fisher_metric, sqrt_prob_jacobian
from .jacobian import JacobianLoss, jacobian_penalty
# --- Fisher spectrum (issue 9): liplayers/regularizers/fisher_spectrum.py ---
from .fisher_spectrum import FisherEigenvalueLoss, data_rank, fisher_eigendecomposition, fisher_max_eigenvalue, fisher_spectrum
