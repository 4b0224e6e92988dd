"""Losses for Lipschitz networks (margin, temperature) and information-geometric robust losses."""
# --- margin and temperature losses (issue 4): liplayers/losses/margin.py ---
from .margin import BinaryHingeLoss, HingeMarginLoss, HKRLoss, KRLoss, TauBCEWithLogitsLoss, TauCrossEntropyLoss
# --- information-geometric robust losses (issue 6): liplayers/losses/information.py ---
from .information import FIRELoss, TRADESLoss, HellingerLoss
