"""torch.nn modules over the imtok_cuda ops.

Quantizers: VectorQuantizer (VQ with straight-through estimator, EMA or learned codebook), ResidualVQ, FSQ,
LFQ / BSQ, BinaryQuantizer. Gaussian splatting: GaussianSplatRenderer and the geometry <-> logit helpers."""
from .quantizers import BinaryQuantizer, FSQ, LFQ, ResidualVQ, VectorQuantizer
from .splat import GaussianSplatRenderer, geometry_from_logits, logits_from_geometry, split_tokens

__all__ = ["VectorQuantizer", "ResidualVQ", "FSQ", "LFQ", "BinaryQuantizer", "GaussianSplatRenderer",
           "geometry_from_logits", "logits_from_geometry", "split_tokens"]
