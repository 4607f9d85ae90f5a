"""Vector-quantization ops: nearest code (and top-k), latent perturbation, quantizers."""
from .nearest import latent_perturbation, nearest, nearest_topk  # noqa: F401
