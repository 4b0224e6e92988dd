"""Operator norms of convolutions: FFT/polyphase identities and soundness of every bound."""
import itertools
import math

import pytest
import torch
from liplayers.lipschitz import UnboundedModuleError, allow_hooks
import torch.nn.functional as F
from torch import nn

from liplayers.functional.conv import (
    circular_conv_norm,
    circular_conv_singular_values,
    conv2d_lipschitz_bound,
    conv_symbol_bound,
    padding_multiplicity,
    polyphase_kernel,
    window_multiplicity,
)
from liplayers.lipschitz import UnboundedModuleError, lipschitz_bound_of


def operator_singular_values(f, shape) -> torch.Tensor:
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    with torch.no_grad():
        y = f(basis) - f(torch.zeros(1, *shape, dtype=torch.float64))
    return torch.linalg.svdvals(y.reshape(n, -1))


@pytest.mark.parametrize("k,s,d", [(3, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2), (4, 2, 1), (2, 2, 1)])
def test_circular_singular_values_match_dense(k, s, d):
    torch.manual_seed(0)
    kern = torch.randn(3, 2, k, k, dtype=torch.float64)
    total = d * (k - 1)
    pads = (total // 2, total - total // 2) * 2

    def f(x):
        return F.conv2d(F.pad(x, pads, mode="circular"), kern, stride=s, dilation=d)

    dense = operator_singular_values(f, (2, 8, 8))
    fft = circular_conv_singular_values(kern, (8, 8), stride=s, dilation=d)
    assert torch.allclose(fft.sort(descending=True).values[: len(dense)], dense, atol=1e-8)
    assert circular_conv_norm(kern, (8, 8), s, d) >= float(dense.max())
    assert circular_conv_norm(kern, (8, 8), s, d) <= float(dense.max()) * (1 + 1e-8)


@pytest.mark.parametrize("s,d", [(2, 1), (3, 1), (2, 3), (1, 2)])
def test_polyphase_identity(s, d):
    torch.manual_seed(0)
    kern = torch.randn(4, 3, 3, 5, dtype=torch.float64)
    x = torch.randn(2, 3, 12, 18, dtype=torch.float64)
    y = F.conv2d(x, kern, stride=s, dilation=d)
    kp = polyphase_kernel(kern, s, d)
    z = F.conv2d(F.pixel_unshuffle(x, s), kp)
    assert torch.allclose(y, z[..., : y.shape[-2], : y.shape[-1]], atol=1e-12)


CONV_CASES = [c for c in itertools.product(["zeros", "circular", "reflect", "replicate"], [1, 2, 3, 5], [1, 2],
                                           [0, 1, 2, "same"])
              if not (c[3] == "same" and c[2] > 1)]


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel:UserWarning")  # torch, on a plain nn.Conv2d under test
@pytest.mark.parametrize("mode,k,s,pad", CONV_CASES)
def test_plain_conv2d_bound_is_sound(mode, k, s, pad):
    torch.manual_seed(hash((mode, k, s, str(pad))) % 1000)
    conv = nn.Conv2d(3, 4, k, stride=s, padding=pad, padding_mode=mode, dtype=torch.float64)
    sv = operator_singular_values(conv, (3, 7, 8))
    bound = lipschitz_bound_of(conv, (3, 7, 8))
    assert bound >= float(sv.max())
    assert lipschitz_bound_of(conv, None) >= float(sv.max())
    if mode == "circular" and (pad == "same" or 2 * pad == k - 1) and s == 1:
        assert bound <= float(sv.max()) * (1 + 1e-8)  # exact for circular 'same'


@pytest.mark.parametrize("groups,dilation", [(2, 1), (1, 2), (2, 2)])
def test_grouped_and_dilated_conv_bounds(groups, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=dilation, dilation=dilation, groups=groups, dtype=torch.float64)
    sv = operator_singular_values(conv, (4, 8, 8))
    assert lipschitz_bound_of(conv, (4, 8, 8)) >= float(sv.max())
    assert lipschitz_bound_of(conv) >= float(sv.max())
    circ = nn.Conv2d(4, 6, 3, padding=dilation, dilation=dilation, groups=groups, padding_mode="circular",
                     dtype=torch.float64)
    sv = operator_singular_values(circ, (4, 8, 8))
    assert abs(lipschitz_bound_of(circ, (4, 8, 8)) / float(sv.max()) - 1) < 1e-8


def test_symbol_bound_holds_at_every_size_and_is_tight():
    torch.manual_seed(0)
    kern = torch.randn(8, 5, 3, 3, dtype=torch.float64)
    b = conv_symbol_bound(kern)
    exact = [circular_conv_norm(kern, (n, n)) for n in (3, 5, 8, 17, 64, 128)]
    assert b >= max(exact)
    assert b <= 1.015 * exact[-1]
    fine = conv_symbol_bound(kern, grid=256)
    assert fine >= max(exact) and fine <= 1.001 * exact[-1]


def test_torch_spectral_norm_is_not_trusted():
    """torch's spectral_norm normalizes the reshaped kernel; the operator norm can exceed 1."""
    torch.manual_seed(0)
    conv = nn.utils.spectral_norm(nn.Conv2d(4, 4, 3, padding=1, dtype=torch.float64))
    for _ in range(30):
        conv(torch.randn(1, 4, 8, 8, dtype=torch.float64))
    conv.eval()
    sv = operator_singular_values(conv, (4, 8, 8))
    assert sv.max() > 1.05  # the reshaped-kernel normalization leaves the operator norm above 1
    with pytest.raises(UnboundedModuleError, match="hooks"):  # the hook recomputes the weight: refused
        lipschitz_bound_of(conv, (4, 8, 8))
    with allow_hooks():  # trusted by the caller: the kernel the hook computes is bounded
        assert lipschitz_bound_of(conv, (4, 8, 8)) >= float(sv.max())


def test_parametrized_spectral_norm_conv_uses_eval_weight():
    torch.manual_seed(0)
    conv = nn.utils.parametrizations.spectral_norm(nn.Conv2d(4, 4, 3, padding=1, dtype=torch.float64))
    conv.train()
    sv = operator_singular_values(conv, (4, 8, 8))  # eval mode inside
    assert lipschitz_bound_of(conv, (4, 8, 8)) >= float(sv.max())


def test_subclass_overriding_forward_is_not_bounded():
    class Doubled(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(UnboundedModuleError, match="overrides"):
        lipschitz_bound_of(Doubled(2, 2, 3), (2, 8, 8))


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate"])
@pytest.mark.parametrize("n,left,right", [(5, 1, 2), (3, 2, 2), (8, 3, 0), (1, 0, 3)])
def test_padding_multiplicity(mode, n, left, right):
    if (mode == "reflect" and (left >= n or right >= n)) or (mode == "circular" and max(left, right) > n):
        return  # torch rejects these paddings
    x = torch.arange(n, dtype=torch.float64).reshape(1, 1, n)
    padded = F.pad(x, (left, right), mode=mode)[0, 0].long()
    brute = int(torch.bincount(padded, minlength=n).max())
    assert padding_multiplicity(n, left, right, mode) == brute
    assert padding_multiplicity(None, left, right, mode) >= brute


@pytest.mark.parametrize("n,k,s,p,d,ceil", [(8, 3, 1, 1, 1, False), (9, 3, 2, 0, 1, True), (10, 4, 3, 1, 1, True),
                                            (12, 3, 2, 1, 2, False)])
def test_window_multiplicity(n, k, s, p, d, ceil):
    x = torch.arange(n, dtype=torch.float64).reshape(1, 1, n, 1)
    cols = F.unfold(F.pad(x, (0, 0, p, p), value=-1.0), (k, 1), dilation=(d, 1), stride=(s, 1))
    brute = int(torch.bincount(cols[cols >= 0].long(), minlength=n).max())
    got = window_multiplicity(n, k, s, p, d, ceil)
    assert got >= brute and window_multiplicity(None, k, s, 0, d) >= got
    if not ceil:
        assert got == brute


def test_bound_validates_input():
    with pytest.raises(ValueError, match="shape"):
        conv2d_lipschitz_bound(torch.randn(3, 3, 3))
    with pytest.raises(ValueError, match="padding_mode"):
        conv2d_lipschitz_bound(torch.randn(2, 2, 3, 3), (2, 8, 8), padding=1, padding_mode="mirror")
    with pytest.raises(ValueError, match="non-finite"):
        conv2d_lipschitz_bound(torch.full((2, 2, 3, 3), float("nan")))


@pytest.mark.parametrize("ks,dil,groups", [((3, 3), 1, 1), ((3, 5), 1, 1), ((3, 3), 2, 2), ((1, 1), 1, 1)])
def test_circular_conv2d_matches_pad_and_gradcheck(ks, dil, groups):
    from liplayers.functional.conv import circular_conv2d

    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64, requires_grad=True)
    k = torch.randn(6, 4 // groups, *ks, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    ph, pw = dil * (ks[0] - 1) // 2, dil * (ks[1] - 1) // 2
    ref = F.conv2d(F.pad(x, (pw, pw, ph, ph), mode="circular"), k, b, dilation=dil, groups=groups)
    assert torch.allclose(circular_conv2d(x, k, b, dil, groups), ref, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, k, b: circular_conv2d(x, k, b, dil, groups), (x, k, b))
    with pytest.raises(ValueError, match="odd"):
        circular_conv2d(x, torch.randn(6, 4, 2, 2, dtype=torch.float64))


@pytest.mark.parametrize("needs", [(False, True, True), (True, False, True), (True, True, False), (False, False, True)])
def test_circular_conv2d_gradients_when_only_some_inputs_need_them(needs):
    """The backward computes the kernel and bias gradients in one pass, only those requested."""
    from liplayers.functional.conv import circular_conv2d

    torch.manual_seed(1)
    x, k, b = (torch.randn(*s, dtype=torch.float64) for s in ((2, 4, 6, 5), (3, 4, 3, 3), (3,)))
    ins = [t.clone().requires_grad_(n) for t, n in zip((x, k, b), needs)]
    refs = [t.clone().requires_grad_(n) for t, n in zip((x, k, b), needs)]
    g = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    circular_conv2d(*ins).backward(g)
    F.conv2d(F.pad(refs[0], (1, 1, 1, 1), mode="circular"), refs[1], refs[2]).backward(g)
    for a, r, n in zip(ins, refs, needs):
        assert (a.grad is None) == (not n)
        if n:
            torch.testing.assert_close(a.grad, r.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode,pad", [("zeros", 1), ("zeros", "same"), ("circular", 1), ("reflect", 2)])
def test_conv2d_operator_and_power_iteration_lower_bound(mode, pad):
    from liplayers.functional.conv import conv2d_operator, conv_operator_power_iteration

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=pad, padding_mode=mode, bias=False, dtype=torch.float64)
    op = conv2d_operator(conv.weight.detach(), conv.stride, conv.padding, conv.dilation, mode)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(op(x), conv(x), atol=1e-12)
    sigma, u = conv_operator_power_iteration(op, torch.randn(1, 3, 8, 8, dtype=torch.float64), n_power_iterations=200)
    exact = float(operator_singular_values(conv, (3, 8, 8)).max())
    assert float(sigma) <= exact * (1 + 1e-12)
    assert float(sigma) >= 0.99 * exact
