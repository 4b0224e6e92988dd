"""The shipped pretrained network loads, has a guaranteed bound near 1 and re-certifies MNIST test images."""

import pytest
import torch

import liplayers
from liplayers.certify import attack_check, certified_accuracy, certify, lipschitz_bound

NAME = "mnist-l2-1.58"


def _model():
    if NAME not in liplayers.zoo.available():
        pytest.fail(f"the weights of {NAME} are not installed with the package")
    return liplayers.zoo.load(NAME)


def test_loads_in_eval_with_a_guaranteed_bound():
    model = _model()
    assert not model.training
    bound = lipschitz_bound(model, (1, 28, 28))
    assert 1.0 - 1e-6 <= bound <= 1.001
    x = torch.rand(1, 1, 28, 28, dtype=torch.float32)
    jac = torch.autograd.functional.jacobian(lambda v: model(v.reshape(1, 1, 28, 28)).reshape(-1), x.reshape(-1))
    assert float(torch.linalg.matrix_norm(jac.double(), ord=2)) <= bound * (1 + 1e-5)


def test_unknown_name_and_card():
    with pytest.raises(ValueError, match="unknown pretrained"):
        liplayers.zoo.load("imagenet-linf")
    assert "reconstructed MNIST" in liplayers.zoo.pretrained.MNIST_CARD


@pytest.mark.slow
def test_recertifies_mnist_test_images(mnist_dir):
    from liplayers.data import load_dataset

    _, test = load_dataset("mnist", mnist_dir)
    x, y = test.tensors[0][:500], test.tensors[1][:500]
    model = _model()
    res = certified_accuracy(model, (x, y), eps=(1.58,))
    card = liplayers.zoo.pretrained.MODEL_CARDS[NAME]["first_500"]
    assert res.clean_accuracy == pytest.approx(card["clean"], abs=0.004)
    assert res.certified_accuracy[0] == pytest.approx(card["certified_1.58"], abs=0.004)
    pred, radius = certify(model, x[:64])
    keep = radius > 0
    report = attack_check(model, x[:64][keep], radius=radius[keep], steps=20, restarts=1, torchattacks=None)
    assert report.violations == 0
