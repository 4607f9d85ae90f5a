"""torch.nn modules over the imtok_cuda ops."""
from .quantizers import BinaryQuantizer, FSQ, LFQ, ResidualVQ, VectorQuantizer  # noqa: F401
from .splat import GaussianSplatRenderer, geometry_from_logits, logits_from_geometry, split_tokens  # noqa: F401
