"""tomesd (ToMe for Stable Diffusion, PyPI tomesd 0.1.3) around the self-attention of a diffusion transformer block.

apply_tomesd(block, ratio, sx, sy) patches a block with diffusers/LDM BasicTransformerBlock layout
(norm1, attn1 self-attention, optional norm2/attn2 cross-attention, norm3, ff) in place:
    m, u = bipartite_soft_matching_random2d(x, w, h, sx, sy, r = int(N * ratio), no_rand, generator)
    x = u(attn1(m(norm1(x)))) + x            (merge_attn; merge_crossattn / merge_mlp as in tomesd)
The metric is the block input x (before norm1). The token grid comes from block._tome_info["size"] = (h, w) of the
full-resolution latent (set it per image size, as tomesd's UNet hook does); a block running at a downsampled
resolution derives its grid as tomesd does, and merges only up to max_downsample.
BasicTransformerBlock here is a minimal such block (for tests and benchmarks).
"""
import math
from typing import Optional

import torch
from torch import nn

from imtok_cuda import merge as _fused
from imtok_cuda.reference import merge as _reference

__all__ = ["apply_tomesd", "remove_tomesd", "BasicTransformerBlock", "compute_merge"]


class _Attention(nn.Module):
    def __init__(self, dim, heads, context_dim=None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, context=None):
        ctx = x if context is None else context
        B, N, C = x.shape
        h = self.heads
        q = self.to_q(x).reshape(B, N, h, C // h).transpose(1, 2)
        k = self.to_k(ctx).reshape(B, ctx.shape[1], h, C // h).transpose(1, 2)
        v = self.to_v(ctx).reshape(B, ctx.shape[1], h, C // h).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(B, N, C))


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention, feed-forward, each pre-norm with a residual (SD's transformer block)."""

    def __init__(self, dim, heads, context_dim=None, ff_mult=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = _Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim * ff_mult), nn.GELU(), nn.Linear(dim * ff_mult, dim))

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


def compute_merge(x: torch.Tensor, info: dict):
    """tomesd's compute_merge: (m_a, m_c, m_m, u_a, u_c, u_m) for one block call."""
    impl = _fused if info["fused"] else _reference
    original_h, original_w = info["size"]
    original_tokens = original_h * original_w
    downsample = int(math.ceil(math.sqrt(original_tokens // x.shape[1])))
    args = info["args"]
    if downsample <= args["max_downsample"]:
        w = int(math.ceil(original_w / downsample))
        h = int(math.ceil(original_h / downsample))
        r = int(x.shape[1] * args["ratio"])
        if args["generator"] is None or args["generator"].device != x.device:
            args["generator"] = torch.Generator(device=x.device)
            if args["seed"] is not None:
                args["generator"].manual_seed(args["seed"])
        use_rand = False if x.shape[0] % 2 == 1 else args["use_rand"]
        m, u = impl.bipartite_soft_matching_random2d(x, w, h, args["sx"], args["sy"], r, no_rand=not use_rand,
                                                     generator=args["generator"])
    else:
        m, u = _reference.do_nothing, _reference.do_nothing
    nothing = (_reference.do_nothing, _reference.do_nothing)
    m_a, u_a = (m, u) if args["merge_attn"] else nothing
    m_c, u_c = (m, u) if args["merge_crossattn"] else nothing
    m_m, u_m = (m, u) if args["merge_mlp"] else nothing
    return m_a, m_c, m_m, u_a, u_c, u_m


def _tomesd_forward(self, x, context=None):
    m_a, m_c, m_m, u_a, u_c, u_m = compute_merge(x, self._tome_info)
    x = u_a(self.attn1(m_a(self.norm1(x)))) + x
    if getattr(self, "attn2", None) is not None:
        x = u_c(self.attn2(m_c(self.norm2(x)), context=context)) + x
    return u_m(self.ff(m_m(self.norm3(x)))) + x


_PATCHED = {}


def apply_tomesd(block: nn.Module, ratio: float = 0.5, sx: int = 2, sy: int = 2, size=None,
                 max_downsample: int = 1, use_rand: bool = True, merge_attn: bool = True,
                 merge_crossattn: bool = False, merge_mlp: bool = False, generator: Optional[torch.Generator] = None,
                 seed: Optional[int] = None, fused: bool = True) -> nn.Module:
    """Patch one diffusion transformer block in place; `size` = (h, w) of the full-resolution token grid."""
    for name in ("norm1", "attn1", "norm3", "ff"):
        if not hasattr(block, name):
            raise ValueError("block must have norm1, attn1, norm3 and ff (a BasicTransformerBlock), missing " + name)
    if not 0 <= ratio < 1:
        raise ValueError("ratio must be in [0, 1), got %r" % (ratio,))
    orig = getattr(block, "_tome_original_class", type(block))
    if orig not in _PATCHED:
        _PATCHED[orig] = type("ToMe" + orig.__name__, (orig,),
                              {"forward": _tomesd_forward, "_tome_original_class": orig})
    block.__class__ = _PATCHED[orig]
    block._tome_info = {"size": size, "fused": fused, "args": {
        "ratio": ratio, "sx": sx, "sy": sy, "max_downsample": max_downsample, "use_rand": use_rand,
        "generator": generator, "seed": seed, "merge_attn": merge_attn, "merge_crossattn": merge_crossattn,
        "merge_mlp": merge_mlp}}
    return block


def remove_tomesd(block: nn.Module) -> nn.Module:
    orig = getattr(type(block), "_tome_original_class", None)
    if orig is not None:
        block.__class__ = orig
        block.__dict__.pop("_tome_info", None)
    return block
