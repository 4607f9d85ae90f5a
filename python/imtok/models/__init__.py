"""Backbones built for token reduction and tokenizers."""
from .vit import VisionTransformer, vit_base_patch16_224, vit_small_patch16_224  # noqa: F401
