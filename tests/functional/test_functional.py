import math

import pytest
import torch

from liplayers.functional import (
    bjorck,
    bjorck_step,
    gram_spectral_bound,
    orthogonality_error,
    power_iteration,
    spectral_norm_exact,
)
from liplayers.functional.orthogonalization import predicted_error

SHAPES = [(16, 16), (24, 8), (8, 24), (3, 5, 7)]


@pytest.mark.parametrize("shape", SHAPES)
def test_gram_bound_is_an_upper_bound_and_tight(shape):
    w = torch.randn(*shape, dtype=torch.float64)
    exact = torch.linalg.matrix_norm(w, ord=2)
    bound = gram_spectral_bound(w, iterations=6)
    assert (bound >= exact).all()
    assert (bound <= exact * 1.01).all()  # tight after 6 iterations on random matrices


def test_gram_bound_complex_and_huge_scale():
    w = torch.randn(6, 4, dtype=torch.complex128) * 1e150
    exact = torch.linalg.matrix_norm(w, ord=2)
    bound = gram_spectral_bound(w)
    assert torch.isfinite(bound) and bound >= exact and bound <= exact * 1.01


def test_power_iteration_is_a_lower_bound_that_converges():
    w = torch.randn(30, 20, dtype=torch.float64)
    exact = float(torch.linalg.matrix_norm(w, ord=2))
    s1, u, _ = power_iteration(w, n_power_iterations=2)
    assert float(s1) <= exact * (1 + 1e-12)
    s2, _, _ = power_iteration(w, u=u, n_power_iterations=500, tol=1e-14)
    assert abs(float(s2) - exact) < 1e-8 * exact


def test_spectral_norm_exact_matches_svd():
    w = torch.randn(10, 12)
    s = torch.linalg.svdvals(w.double())[0]
    assert float(spectral_norm_exact(w)) == pytest.approx(float(s), rel=1e-8)
    assert float(spectral_norm_exact(w)) >= float(s)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("order", [3, 5])
def test_bjorck_converges_to_polar_factor(shape, order):
    w = torch.randn(*shape, dtype=torch.float64)
    q = bjorck(w, iterations=60, order=order)
    u, _, vh = torch.linalg.svd(w, full_matrices=False)
    assert torch.allclose(q, u @ vh, atol=1e-9)
    assert float(orthogonality_error(q).max()) < 1e-9


def test_bjorck_without_prescale_diverges_beyond_sqrt3():
    w = torch.eye(4, dtype=torch.float64) * 2.0  # σ = 2 > √3: Björck alone does not converge
    q = bjorck(w, iterations=5, tol=0.0, prescale=False)
    assert not torch.allclose(q, torch.eye(4, dtype=torch.float64), atol=1e-3)
    q = bjorck(w, iterations=40)
    assert torch.allclose(q, torch.eye(4, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("order", [3, 5])
def test_predicted_error_bounds_one_step(order):
    # a near-orthogonal matrix with a known Gram error e: the step's error is <= predicted
    q, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64))
    s = torch.linspace(math.sqrt(0.9), math.sqrt(1.1), 20, dtype=torch.float64)
    w = q * s
    e = float(orthogonality_error(w))
    after = float(orthogonality_error(bjorck_step(w, order=order)))
    assert after <= predicted_error(e, order) * (1 + 1e-9)
    assert after >= 0.5 * predicted_error(e, order)  # and the prediction is not loose


def test_bad_input_errors():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        bjorck(torch.randn(5))
    with pytest.raises(ValueError, match="non-finite"):
        bjorck(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="order"):
        bjorck(torch.randn(3, 3), order=4)


@pytest.mark.parametrize("e", [0.01, 0.06, 0.2])
def test_tuned_cubic_step_beats_taylor_and_its_prediction_holds(e):
    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    s = torch.sqrt(torch.linspace(1 - e, 1 + e, 40, dtype=torch.float64))
    w = q * s  # Gram eigenvalues fill [1 − e, 1 + e]
    tuned = float(orthogonality_error(bjorck_step(w, order=5, e=e)))
    taylor = float(orthogonality_error(bjorck_step(w, order=5)))
    assert tuned <= predicted_error(e, 5, tuned=True)
    assert tuned < 0.4 * taylor


def test_random_wrappers_use_the_generator_device():
    from liplayers.functional import random as rng

    g = torch.Generator().manual_seed(3)
    assert rng.randn(3, generator=torch.Generator().manual_seed(3), device="meta").device.type == "meta"
    a = rng.randn(2, 3, generator=torch.Generator().manual_seed(3), device="cpu")
    assert torch.equal(a, torch.randn(2, 3, generator=torch.Generator().manual_seed(3)))
    assert rng.randint(0, 2, (5,), generator=g, device="meta").shape == (5,)
    assert rng.rand((4,), generator=g, dtype=torch.float64, device="meta").dtype == torch.float64
