"""Bad input gets an error that names the problem — never a silent NaN, never a wrong certificate.

Covers: non-finite weights (every parametrized layer, in training, eval, bound and export),
non-finite inputs to everything that certifies or attacks, wrong shapes, group sizes that do
not divide, non-positive radii / eps / sigma / margins, probabilities that do not sum to 1,
unsupported layers in a bound, and non-finite logits in certification.

Layers themselves do not check their *inputs* for NaN (that would cost a device→host sync on
every forward and a graph break under ``torch.compile``, and ``nn.Linear`` does not either);
every function that turns outputs into a claim (radius, bound, attack) does.
"""
import math

import pytest
import torch
from torch import nn

import liplayers as L
from liplayers import attacks as A
from liplayers import certify as C
from liplayers import geometry as G
from liplayers.functional import bjorck, gram_spectral_bound, power_iteration, spectral_norm_exact

NAN = float("nan")
INF = float("inf")
NONFINITE = "non-finite"


def _free(layer: nn.Module) -> torch.Tensor:
    """The stored (free) parameter of a layer's weight."""
    if hasattr(layer, "parametrizations"):
        return layer.parametrizations.weight.original
    if isinstance(layer, L.OrthoConv2d):
        return layer.ortho
    if isinstance(layer, L.HouseholderActivation):
        return layer.phi
    return layer.weight


def _poison(layer: nn.Module, value: float = NAN) -> nn.Module:
    with torch.no_grad():
        _free(layer).view(-1)[0] = value
    return layer


DENSE = {
    "bjorck": lambda: L.BjorckLinear(6, 4),
    "bjorck_diff": lambda: L.BjorckLinear(6, 4, mode="differentiable"),
    "spectral": lambda: L.SpectralLinear(6, 4),
    "linf": lambda: L.LInfLinear(6, 4),
}
CONV = {
    "orthoconv": lambda: L.OrthoConv2d(2, 2, 3),
    "orthoconv_s2": lambda: L.OrthoConv2d(2, 4, 3, stride=2),
    "specconv": lambda: L.SpectralConv2d(2, 2, 3, input_size=(4, 4)),
    "rko": lambda: L.RKOConv2d(2, 2, 3),
}


def _input(name: str) -> torch.Tensor:
    return torch.randn(2, 6) if name in DENSE else torch.randn(1, 2, 4, 4)


# ---------------------------------------------------------------- non-finite weights
@pytest.mark.parametrize("value", [NAN, INF])
@pytest.mark.parametrize("name", list(DENSE) + list(CONV))
def test_nonfinite_weight_training_forward_raises(name, value):
    layer = _poison({**DENSE, **CONV}[name](), value)
    layer.train()
    with pytest.raises(ValueError, match=NONFINITE):
        layer(_input(name))


@pytest.mark.parametrize("name", list(DENSE) + list(CONV))
def test_nonfinite_weight_eval_bound_export_raise(name):
    layer = _poison({**DENSE, **CONV}[name]())
    shape = tuple(_input(name).shape[1:])
    with pytest.raises(ValueError, match=NONFINITE):
        layer.eval()(_input(name))
    with pytest.raises(ValueError, match=NONFINITE):
        layer.lipschitz_bound(shape)
    with pytest.raises(ValueError, match=NONFINITE):
        C.lipschitz_bound(L.Sequential(layer), shape)
    with pytest.raises(ValueError, match=NONFINITE):
        L.export(layer)


def test_nonfinite_weight_after_optimizer_step_is_caught_at_next_forward():
    """A NaN gradient step poisons the parameter; the next (retracting) forward refuses it."""
    layer = L.BjorckLinear(4, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(3, 4)
    x[0, 0] = NAN  # NaN input → NaN loss → NaN gradient
    layer(x).sum().backward()
    opt.step()
    with pytest.raises(ValueError, match="non-finite"):
        layer(torch.randn(3, 4))


def test_nonfinite_plain_linear_and_householder_bounds_raise():
    lin = _poison(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=NONFINITE):
        C.lipschitz_bound(nn.Sequential(lin))
    hh = _poison(L.HouseholderActivation(4, dim=-1))
    with pytest.raises(ValueError, match="phi contain non-finite"):
        hh.lipschitz_bound()
    with pytest.raises(ValueError, match="phi contain non-finite"):
        hh.linf_lipschitz_bound()
    with pytest.raises(ValueError, match="non-finite"):
        L.linf_lipschitz_bound_of(_poison(L.LInfLinear(3, 3)))


@pytest.mark.parametrize("fn", [bjorck, power_iteration, gram_spectral_bound, spectral_norm_exact])
def test_functional_rejects_nonfinite_and_bad_shapes(fn):
    with pytest.raises(ValueError, match=NONFINITE):
        fn(torch.tensor([[NAN, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fn(torch.ones(3))


# ---------------------------------------------------------------- shapes and configuration
def test_wrong_input_shapes_name_the_problem():
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        L.BjorckLinear(4, 3)(torch.randn(2, 5))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        L.SpectralLinear(4, 3)(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"expects input \(B, 2, H, W\)"):
        L.OrthoConv2d(2, 2, 3)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"expects input \(B, 2, H, W\)"):
        L.OrthoConv2d(2, 2, 3)(torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="divisible by 2"):
        L.OrthoConv2d(2, 4, 3, stride=2, padding="same", padding_mode="circular")(torch.randn(1, 2, 5, 4))
    with pytest.raises(RuntimeError, match="channels"):
        L.SpectralConv2d(2, 2, 3)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="does not have 4 channels"):
        L.HouseholderActivation(4, dim=-1)(torch.randn(2, 6))
    with pytest.raises(ValueError, match="dim 3 is out of range"):
        L.MaxMin(dim=3)(torch.randn(2, 4))


@pytest.mark.parametrize("make,match", [
    (lambda: L.GroupSort(0), "group_size must be a positive integer"),
    (lambda: L.GroupSort(-2), "group_size must be a positive integer"),
    (lambda: L.GroupSort(2.0), "group_size must be a positive integer"),
    (lambda: L.BjorckLinear(0, 3), "in_features must be a positive integer"),
    (lambda: L.BjorckLinear(3, -1), "out_features must be a positive integer"),
    (lambda: L.SpectralLinear(0, 3), "in_features must be a positive integer"),
    (lambda: L.BjorckLinear(3, 3, mode="exact"), "mode must be 'retract' or 'differentiable'"),
    (lambda: L.BjorckLinear(3, 3, order=4), "order must be 3 or 5"),
    (lambda: L.BjorckLinear(3, 3, tol=-1.0), "tol must be > 0"),
    (lambda: L.LInfLinear(3, 3, radius=0), "radius must be a positive number"),
    (lambda: L.LInfLinear(3, 3, radius=-1.0), "radius must be a positive number"),
    (lambda: L.HouseholderActivation(3), "channels must be a positive even integer"),
    (lambda: L.OrthoConv2d(2, 2, 3, groups=2), "groups must be 1"),
    (lambda: L.OrthoConv2d(2, 2, 3, padding_mode="reflect"), "copies border pixels"),
    (lambda: L.SpectralConv2d(2, 2, 3, padding_mode="replicate"), "copies border pixels"),
    (lambda: L.SpectralConv2d(2, 2, 3, n_power_iterations=0), "n_power_iterations must be >= 1"),
    (lambda: L.ScaledAvgPool2d(0), "kernel_size, stride must be >= 1"),
    (lambda: L.L2NormPool2d(2, eps=-1.0), "eps must be >= 0"),
])
def test_bad_configuration(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("size,group", [(4, 3), (5, 2), (6, 4)])
def test_group_size_must_divide(size, group):
    with pytest.raises(ValueError, match=f"not divisible by group_size {group}"):
        L.GroupSort(group)(torch.randn(2, size))


# ---------------------------------------------------------------- certification
MODEL = L.Sequential(L.BjorckLinear(3, 4), L.MaxMin(), L.BjorckLinear(4, 2))


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_certification_refuses_nonfinite_logits(value):
    logits = torch.tensor([[value, 1.0], [0.5, 0.0]])
    with pytest.raises(ValueError, match="non-finite"):
        C.certified_radius(logits, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        C.certified_radius_last_layer(logits, torch.eye(2), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        C.certified_radius_linf(logits, 1.0)


class _Overflow(nn.Module):
    """Multiplies by 1e30: finite weights, infinite logits in float32 for large inputs."""

    def forward(self, x):
        return x * 1e30


def test_certify_model_with_overflowing_logits_refuses():
    from liplayers.lipschitz import register_lipschitz_bound

    register_lipschitz_bound(_Overflow)(lambda m, s: 1e30)
    model = L.Sequential(L.BjorckLinear(3, 2), _Overflow(), _Overflow())
    with pytest.raises(ValueError, match="non-finite"):
        C.certify(model, torch.ones(2, 3) * 1e10)


def test_certify_rejects_nonfinite_inputs():
    x = torch.tensor([[NAN, 0.0, 0.0]])
    with pytest.raises(ValueError, match="non-finite"):
        C.certify(MODEL, x)
    with pytest.raises(ValueError, match="non-finite"):
        C.lipschitz_lower_bound(MODEL, x)
    with pytest.raises(ValueError, match="non-finite"):
        C.SmoothedClassifier(MODEL, 0.5).certify(x, n0=4, n=4)
    with pytest.raises(ValueError, match="non-finite"):
        A.pgd_attack(MODEL, x, torch.zeros(1, dtype=torch.long), eps=0.1, domain=None)


@pytest.mark.parametrize("bad", [0.0, -1.0, NAN, INF])
def test_nonpositive_lipschitz_constant_refused(bad):
    with pytest.raises(ValueError, match="lipschitz must be finite and > 0"):
        C.certified_radius(torch.tensor([[0.0, 1.0]]), bad)


@pytest.mark.parametrize("bad", [-0.1, NAN, INF])
def test_negative_or_nonfinite_eps_and_radii(bad):
    x, y = torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="eps values must be finite and >= 0"):
        C.certified_accuracy(MODEL, (x, y), eps=[0.0, bad])
    with pytest.raises(ValueError, match="eps must be finite and non-negative"):
        A.pgd_attack(MODEL, x, y, eps=bad, domain=None)
    with pytest.raises(ValueError, match="margin must be a finite float >= 0"):
        C.AbstainingClassifier(MODEL, bad)
    with pytest.raises(ValueError, match="radius must be finite and >= 0"):
        C.attack_check(MODEL, x, y, radius=torch.full((4,), bad))


@pytest.mark.parametrize("bad", [0.0, -1.0, NAN])
def test_smoothing_sigma_must_be_positive(bad):
    with pytest.raises(ValueError, match="sigma must be a finite float > 0"):
        C.SmoothedClassifier(MODEL, bad)


def test_unsupported_layer_in_a_bound_is_named():
    class Mystery(nn.Module):
        def forward(self, x):
            return x * 3

    model = nn.Sequential(L.BjorckLinear(3, 3), Mystery())
    with pytest.raises(L.UnboundedModuleError, match="Mystery"):
        C.lipschitz_bound(model)
    with pytest.raises(L.UnboundedModuleError, match="Mystery"):
        L.Sequential(*model).lipschitz_bound()
    with pytest.raises(L.UnboundedModuleError, match="Mystery"):
        C.certify(model, torch.randn(2, 3))

    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(L.UnboundedModuleError, match="overrides forward"):
        C.lipschitz_bound(nn.Sequential(Doubled(3, 3)))
    with pytest.raises(L.UnboundedModuleError, match="Softmax"):
        L.linf_lipschitz_bound_of(nn.Softmax(dim=1))


def test_forward_hook_refused_in_bound():
    model = L.Sequential(L.BjorckLinear(3, 3))
    h = model[0].register_forward_hook(lambda m, i, o: o * 10)
    try:
        with pytest.raises(ValueError, match="forward hooks"):
            C.lipschitz_bound(model)
    finally:
        h.remove()


# ---------------------------------------------------------------- probabilities
@pytest.mark.parametrize("fn", [G.fisher_rao_distance, G.kl_divergence, G.hellinger_distance])
def test_probabilities_must_sum_to_one_and_be_nonnegative(fn):
    q = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match="must sum to 1"):
        fn(torch.tensor([0.5, 0.6]), q, from_logits=False)
    with pytest.raises(ValueError, match="non-negative"):
        fn(torch.tensor([-0.5, 1.5]), q, from_logits=False)
    with pytest.raises(ValueError, match="non-finite"):
        fn(torch.tensor([NAN, 0.0]), q)
    with pytest.raises(ValueError, match="shape mismatch"):
        fn(torch.tensor([0.2, 0.3, 0.5]), q, from_logits=False)


def test_valid_inputs_still_pass():
    """The checks do not reject what they should accept (guards against over-eager checks)."""
    logits = MODEL.eval()(torch.randn(5, 3))
    r = C.certified_radius(logits, MODEL.lipschitz_bound())
    assert torch.isfinite(r).all() and (r >= 0).all()
    d = G.fisher_rao_distance(torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5]), from_logits=False)
    assert math.isfinite(float(d))
    assert L.GroupSort(3)(torch.randn(2, 6)).shape == (2, 6)
