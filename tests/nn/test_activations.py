import pytest
import torch

import liplayers as L


@pytest.mark.parametrize("act,dim,shape", [
    (L.GroupSort(4), -1, (5, 12)),
    (L.MaxMin(), -1, (5, 12)),
    (L.FullSort(), -1, (5, 12)),
    (L.GroupSort(2, dim=1), 1, (3, 6, 4, 4)),
    (L.GroupSort(3, dim=1), 1, (3, 6, 4, 4)),
])
def test_output_is_a_permutation_of_the_input(act, dim, shape):
    x = torch.randn(*shape, dtype=torch.float64)
    y = act(x)
    assert y.shape == x.shape
    xs = torch.sort(x.movedim(dim, -1).reshape(-1, shape[dim]), dim=-1).values
    ys = torch.sort(y.movedim(dim, -1).reshape(-1, shape[dim]), dim=-1).values
    assert torch.equal(xs, ys)  # same multiset in every fibre along dim


@pytest.mark.parametrize("act", [L.GroupSort(4), L.MaxMin(), L.FullSort()])
def test_sorted_within_groups_and_gradient_norm_preserved(act):
    x = torch.randn(7, 16, dtype=torch.float64, requires_grad=True)
    y = act(x)
    g = act.group_size or 16
    groups = y.reshape(7, 16 // g, g)
    assert (groups[..., 1:] >= groups[..., :-1]).all()
    v = torch.randn_like(y)
    (grad,) = torch.autograd.grad((y * v).sum(), x)
    assert torch.allclose(grad.norm(dim=-1), v.norm(dim=-1))


def test_one_lipschitz_on_random_pairs():
    act = L.GroupSort(4)
    x, z = torch.randn(200, 16, dtype=torch.float64), torch.randn(200, 16, dtype=torch.float64)
    assert ((act(x) - act(z)).norm(dim=1) <= (x - z).norm(dim=1) * (1 + 1e-12)).all()
    assert act.lipschitz_bound() == 1.0


def test_maxmin_is_groupsort_of_two():
    x = torch.randn(4, 10)
    assert torch.equal(L.MaxMin()(x), L.GroupSort(2)(x))
    assert torch.equal(L.MaxMin()(x), torch.sort(x.reshape(4, 5, 2), dim=-1).values.reshape(4, 10))


def test_group_size_must_divide():
    with pytest.raises(ValueError, match="not divisible by group_size 4"):
        L.GroupSort(4)(torch.randn(2, 6))
    with pytest.raises(ValueError, match="positive integer"):
        L.GroupSort(0)
