"""Criteria on logits, ``forward(input, target)``: margin and temperature losses for Lipschitz
networks, the losses of certified training (offset cross-entropy, GloRo, certificate
regularization, EMMA, logit annealing, an ε ramp) and information-geometric robust losses."""
from .certificate import CertificateRegularizedLoss, EMMALoss, LogitAnnealingLoss, certified_radius_of_target
from .gloro import GloRoLoss, gloro_logits, gloro_predict
from .information import FIRELoss, HellingerLoss, TRADESLoss
from .margin import BinaryHingeLoss, HingeMarginLoss, HKRLoss, KRLoss, TauBCEWithLogitsLoss, TauCrossEntropyLoss
from .offset import OffsetCrossEntropyLoss
from .schedules import EpsilonMixin, EpsilonRamp

__all__ = [
    "BinaryHingeLoss", "HingeMarginLoss", "HKRLoss", "KRLoss", "TauBCEWithLogitsLoss", "TauCrossEntropyLoss",
    "OffsetCrossEntropyLoss", "GloRoLoss", "gloro_logits", "gloro_predict", "CertificateRegularizedLoss",
    "EMMALoss", "LogitAnnealingLoss", "certified_radius_of_target", "EpsilonRamp", "EpsilonMixin",
    "FIRELoss", "TRADESLoss", "HellingerLoss",
]
