"""EViT (Liang et al., ICLR 2022; youweiliang/evit) on a timm VisionTransformer.

At each pruning block: x = x + attn(norm1(x)); keep the ceil(keep_rate * (N - 1)) tokens the class token
attends to most (mean over heads), in descending order, and fuse the others into one token weighted by their
class-token attention; then the MLP. DeiT-S at keep_rate 0.7 on blocks (3, 6, 9): 197 -> 140 -> 100 -> 72
tokens. The class-token row comes from the fused attention op (no [B, H, N, N] map), keep-and-fuse is one kernel
(imtok_cuda.prune.evit_keep_fuse); inside imtok.use_reference() both run their references.
Needs a class token and no other prefix token (distillation / register tokens are not defined by EViT).
"""
from torch import nn

from imtok.layers.attention import self_attention
from imtok_cuda import prune as _fused
from imtok_cuda.reference import prune as _reference

from ._patch import check_no_mask, class_token_vit_blocks, ops, patch_class, residual_branch, unpatch

__all__ = ["apply_evit", "remove_evit"]

_TAG = "EViT"


def _evit_block_forward(self, x, attn_mask=None, is_causal=False):
    check_no_mask(attn_mask, is_causal)
    impl = ops(_fused, _reference)
    left = impl.evit_left_tokens(x.shape[1], self._evit_keep_rate)
    prunes = left < x.shape[1] - 1
    out, side = self_attention(self.attn, self.norm1(x), need=("cls_attn",) if prunes else ())
    x = x + residual_branch(self, 1, out)
    if prunes:
        x, _ = impl.evit_keep_fuse(x, side["cls_attn"][:, 1:].to(x.dtype), left, self._evit_fuse_token)
    return x + residual_branch(self, 2, self.mlp(self.norm2(x)))


def apply_evit(model: nn.Module, keep_rate: float = 0.7, layers=(3, 6, 9), fuse_token: bool = True) -> nn.Module:
    """Make blocks `layers` of a timm ViT EViT pruning blocks (in place; returns the model)."""
    if not 0 < keep_rate <= 1:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate!r}")
    blocks = class_token_vit_blocks(model, "EViT")
    for i in layers:
        if not 0 <= i < len(blocks):
            raise ValueError(f"layer {i} out of range for a ViT with {len(blocks)} blocks")
    remove_evit(model)
    for i in layers:
        patch_class(blocks[i], _TAG, {"forward": _evit_block_forward})
        blocks[i]._evit_keep_rate = float(keep_rate)
        blocks[i]._evit_fuse_token = bool(fuse_token)
    return model


def remove_evit(model: nn.Module) -> nn.Module:
    """Undo apply_evit: the original classes, no added attributes."""
    for block in getattr(model, "blocks", []):
        unpatch(block, _TAG, ("_evit_keep_rate", "_evit_fuse_token"))
    return model
