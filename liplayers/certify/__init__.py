r"""Certification: sound Lipschitz bounds, margin certificates, certified accuracy, abstention,
randomized smoothing, and an empirical check of certificates against attacks.

Soundness first: every radius comes from a *guaranteed upper bound* of the
Lipschitz constant of the network exactly as it runs in eval mode (the weights it uses now),
with a small documented floating-point margin; nothing is assumed 1-Lipschitz.

Bounds
    :func:`lipschitz_bound` (guaranteed upper), :func:`lipschitz_lower_bound` (empirical,
    shows tightness), :func:`check_boundable`.
Margin certificates (:mod:`.margins`)
    :func:`certified_radius` — multiclass (f_y − max_{j≠y} f_j)/(√2 L), binary |f|/L,
    ``norm="linf"`` via r₂/√n; :func:`certified_radius_last_layer` — min_j (f_y − f_j)/
    (‖w_y − w_j‖ L_body).
Evaluation (:mod:`.evaluation`, :mod:`.accuracy`)
    :func:`certify` → (prediction, radius), :class:`Certifier`; :func:`certified_accuracy` →
    :class:`CertifiedAccuracy`, :func:`plot_certified_accuracy`.
Abstention (:mod:`.abstention`)
    :class:`AbstainingClassifier` (class ⊥ = :data:`ABSTAIN` = −1 when radius < margin),
    :class:`AbstentionReport`.
Randomized smoothing (:mod:`.smoothing`)
    :class:`SmoothedClassifier` (Cohen et al. 2019; Clopper–Pearson via scipy).
Empirical check (:mod:`.empirical`)
    :func:`attack_check` → :class:`AttackCheckReport` (our L2 PGD, plus torchattacks if
    installed).
"""
from .abstention import AbstainingClassifier, AbstentionReport
from .bounds import check_boundable, lipschitz_bound, lipschitz_lower_bound
from .empirical import AttackCheckReport, attack_check
from .accuracy import CertifiedAccuracy, certified_accuracy, plot_certified_accuracy
from .evaluation import Certifier, certify, split_last_linear
from .margins import ABSTAIN, certified_radius, certified_radius_last_layer, predict_from_logits
from .smoothing import SmoothedClassifier, clopper_pearson_lower
# L∞ margin certificates (.linf), mean certifiable robustness and the smoothed
# classifier's Lipschitz bound (.robustness)
from .linf import certified_radius_linf, certify_linf, linf_margin_condition
from .robustness import mean_certifiable_robustness, signed_certified_radius, smoothed_lipschitz_bound

__all__ = [
    "lipschitz_bound",
    "lipschitz_lower_bound",
    "check_boundable",
    "certified_radius",
    "certified_radius_last_layer",
    "predict_from_logits",
    "ABSTAIN",
    "certify",
    "certified_accuracy",
    "CertifiedAccuracy",
    "Certifier",
    "split_last_linear",
    "plot_certified_accuracy",
    "AbstainingClassifier",
    "AbstentionReport",
    "SmoothedClassifier",
    "clopper_pearson_lower",
    "attack_check",
    "AttackCheckReport",
    # L∞ certificates and robustness metrics
    "certified_radius_linf",
    "certify_linf",
    "linf_margin_condition",
    "mean_certifiable_robustness",
    "signed_certified_radius",
    "smoothed_lipschitz_bound",
]
