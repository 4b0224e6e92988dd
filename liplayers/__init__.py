"""liplayers: orthogonal and 1-Lipschitz layers for PyTorch with sound certificates."""
__version__ = "0.1.0"
