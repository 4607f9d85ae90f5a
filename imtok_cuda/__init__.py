"""imtok_cuda: fused C++/CUDA kernels for image tokenizers and generators.

Families: vq (quantization), splat (GPSToken), shuffle (Token-Shuffle), merge (ToMe, tomesd), prune (EViT,
GTP-ViT, FasterVLM), attention (side outputs for pruning), sampling (AR / MaskGIT / GSD). Every op has a pure-PyTorch
reference in imtok_cuda.reference, a CPU kernel and a CUDA kernel.
"""
import torch  # noqa: F401  (libtorch must be loaded before the extension)

from ._loader import C as _C, build_info, emulation_available  # noqa: F401
from . import vq, splat, shuffle, merge, prune, attention, sampling  # noqa: F401

__version__ = "0.1.0"
