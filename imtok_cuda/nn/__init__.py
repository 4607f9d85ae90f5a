"""torch.nn modules over the imtok_cuda ops."""
from .quantizers import BinaryQuantizer, FSQ, LFQ, ResidualVQ, VectorQuantizer  # noqa: F401
