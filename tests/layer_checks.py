"""Helpers shared by the layer tests: a few large-learning-rate training steps, and the dense matrix
of a linear map on images (its impulse response), measured independently of the layer's bound."""
import torch


def adam_steps(m, x, steps=5, lr=0.2):
    """``steps`` Adam steps at ``lr`` on a random regression target (moves the weights far)."""
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    m.train()
    for _ in range(steps):
        y = m(x)
        loss = (y - torch.randn_like(y)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def dense(op, c, h, w):
    """The (out, c·h·w) matrix of the linear map ``op`` on (c, h, w) images, float64."""
    n = c * h * w
    return op(torch.eye(n, dtype=torch.float64).reshape(n, c, h, w)).reshape(n, -1).T
