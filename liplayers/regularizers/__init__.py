"""Objectives that need the model, ``forward(model, x, y)`` or penalties of its weights: Parseval, ISO
(partial isometry), Jacobian, Fisher spectrum, adversarial training."""
from .adversarial import AdversarialTrainingLoss
from .parseval import ParsevalRetraction, parseval_penalty, parseval_retraction_, parseval_weights, register_parseval_retraction
from .iso import ISOLoss, iso_penalty, iso_penalty_stereographic, iso_schedule, pullback_fisher_metric, sqrt_prob_jacobian
from .jacobian import JacobianLoss, jacobian_penalty
from .fisher_spectrum import FisherEigenvalueLoss, data_rank, fisher_eigendecomposition, fisher_max_eigenvalue, fisher_spectrum
