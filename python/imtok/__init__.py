"""imtok: tokenizers, generators and tools built on imtok_cuda.

`imtok.use_reference()` is the one switch that runs a model on the pure-PyTorch reference ops instead of the
fused kernels (imtok.layers.switch)."""
from .layers.switch import reference_enabled, use_reference

__all__ = ["use_reference", "reference_enabled"]
