"""Lipschitz bounds: the protocol of liplayers layers, one registry per pair of norms, and the
bounds of plain ``torch.nn`` types (each implemented once, for every dimension it supports).

**Deny by default.** ``lipschitz_bound_of(module, input_shape)`` returns a guaranteed upper bound
of the module's L2→L2 Lipschitz constant as it runs now in eval mode, or raises
:class:`UnboundedModuleError` naming what has no proof: an unknown type, an argument value outside
the registered proof (read when the bound is computed, not at construction), a call path the
registry cannot see (``forward``/``__call__`` on the instance or overridden in a subclass below the
class that gives the bound), forward hooks, a dimension that is the batch's (a module mixing
samples), or a bound that is not a finite number ≥ 0. ``linf_lipschitz_bound_of`` does the same
for ∞→∞. Registering ``liplayers`` alone registers every bound (no import order matters).
"""
from .checks import feature_dim, int_arg, real_arg
from .l2 import L2_BOUNDS, compose_bounds, lipschitz_bound_of, register_lipschitz_bound
from .linf import LINF_BOUNDS, linf_lipschitz_bound_of, linf_operator_norm, register_linf_lipschitz_bound
from .protocol import HookedModuleError, InputShapeRequiredError, LipschitzModule, Shape, UnboundedModuleError
from .registry import BoundRegistry, allow_hooks, check_call_path, check_hooks, global_hooks
from .shapes import eval_mode, output_shape
from . import torch_activations, torch_conv, torch_linear, torch_pooling  # noqa: F401,E402  (register bounds)

__all__ = [
    "BoundRegistry", "HookedModuleError", "InputShapeRequiredError", "L2_BOUNDS", "allow_hooks", "LINF_BOUNDS", "LipschitzModule", "UnboundedModuleError",
    "check_call_path", "check_hooks", "compose_bounds", "eval_mode", "feature_dim", "global_hooks", "int_arg",
    "linf_lipschitz_bound_of", "linf_operator_norm", "lipschitz_bound_of", "output_shape", "real_arg",
    "register_linf_lipschitz_bound", "register_lipschitz_bound",
]
