"""Backbones of the imtok models: ViT blocks on imtok.layers.Attention, CNN encoder/decoder blocks."""
from .cnn import CNNDecoder, CNNEncoder, MaskGITDecoder  # noqa: F401
from .vit import Block, Mlp, ModulatedBlock, SwiGLU, Transformer  # noqa: F401
