"""Ready architectures of gradient-norm-preserving networks."""
from .architectures import gnp_conv_net, gnp_mlp

__all__ = ["gnp_conv_net", "gnp_mlp"]
