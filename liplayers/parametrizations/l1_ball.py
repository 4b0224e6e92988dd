"""Row-wise projection onto the L1 ball as a weight map: every row of W has L1 norm ≤ r."""
from __future__ import annotations

from torch import Tensor

from ..functional.l1_projection import project_l1_ball
from ._common import EvalCachedMap, version_key

__all__ = ["L1BallRows"]


class L1BallRows(EvalCachedMap):
    r"""Parametrization ``W = P_{B₁(r)}(V)`` row by row: every row of W has L1 norm ≤ ``radius``.

    Hence ``‖W‖_{∞→∞} ≤ radius`` (Anil, Lucas & Grosse 2019; projection of Condat 2016,
    see :func:`~liplayers.functional.project_l1_ball`). The projection is applied in the forward
    pass (V is stored free, gradients flow through the projection's exact a.e. Jacobian). In
    eval mode the projected weight is cached per version of V.

    Args:
        radius: L1 radius ``r > 0`` of every row (default 1).
        method: ``"newton"`` (default), ``"sort"`` or ``"condat"``, see ``project_l1_ball``.
    """

    def __init__(self, radius: float = 1.0, method: str = "newton") -> None:
        super().__init__()
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0:
            raise ValueError(f"radius must be a positive number, got {radius!r}")
        if method not in ("newton", "sort", "condat"):
            raise ValueError(f"method must be 'newton', 'sort' or 'condat', got {method!r}")
        self.radius = float(radius)
        self.method = method

    def forward(self, v: Tensor) -> Tensor:
        if v.dim() != 2:
            raise ValueError(f"L1BallRows expects a 2-D weight (out, in), got shape {tuple(v.shape)}")
        if self.training:
            return project_l1_ball(v, self.radius, dim=-1, method=self.method)
        return self._eval_weight(v)

    def _eval_key(self, v: Tensor) -> tuple:
        return version_key(v) + (self.radius, self.method)

    def _compute_eval(self, v: Tensor) -> Tensor:
        return project_l1_ball(v, self.radius, dim=-1, method=self.method)

    def right_inverse(self, w: Tensor) -> Tensor:
        """Any weight is accepted; rows outside the ball are projected at the next forward."""
        return w

    def extra_repr(self) -> str:
        return f"radius={self.radius}, method={self.method!r}"
