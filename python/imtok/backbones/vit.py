"""Pre-norm ViT blocks with timm's names (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2) over
imtok.layers.Attention, so a key mask or packed sequences (cu_seqlens) reach the fused attention.

Block / Transformer: TiTok's block (affine LayerNorm, GELU MLP). ModulatedBlock: FlexTok's (no-affine LayerNorm,
qk-norm, SwiGLU, optional AdaLN-zero per token group, prefix-LM mask)."""
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Attention

__all__ = ["Mlp", "Block", "Transformer", "SwiGLU", "ModulatedBlock", "modulate"]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """x + attn(norm1(x)); x + mlp(norm2(x)) (LayerNorm eps 1e-5, exact GELU: TiTok's ResidualAttentionBlock)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, key_mask=None, cu_seqlens=None):
        x = x + self.attn(self.norm1(x), key_mask=key_mask, cu_seqlens=cu_seqlens)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """depth Blocks; forward(x [B, N, C], key_mask=None, cu_seqlens=None)."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio) for _ in range(depth)])

    def forward(self, x, key_mask=None, cu_seqlens=None):
        for blk in self.blocks:
            x = blk(x, key_mask=key_mask, cu_seqlens=cu_seqlens)
        return x


class SwiGLU(nn.Module):
    """fc2(silu(fc1(x)) * fc3(x)) without biases; hidden = int(2 hidden / 3) so that the three matrices cost what
    a plain MLP of `hidden` costs (FlexTok's GatedMlp)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = int(2 * hidden / 3)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc3 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


def _plain_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, bias=False)


def modulate(x, shift, scale, sizes):
    """x * (1 + scale) + shift per group of consecutive tokens: shift, scale [B, G, D], sizes G ints summing to
    x.shape[1] (group g = the next sizes[g] tokens)."""
    if len(sizes) == 1:
        return x * (1 + scale) + shift
    return torch.cat([part * (1 + scale[:, g:g + 1]) + shift[:, g:g + 1]
                      for g, part in enumerate(x.split(list(sizes), 1))], 1)


def _gate(x, gate, sizes):
    if len(sizes) == 1:
        return x * gate
    return torch.cat([part * gate[:, g:g + 1] for g, part in enumerate(x.split(list(sizes), 1))], 1)


class ModulatedBlock(nn.Module):
    """FlexTok's transformer block: LayerNorms without affine parameters, attention without biases with per-head
    LayerNorm on q and k and muP's scale 8 / head_dim, SwiGLU MLP without biases.

    groups > 0 adds AdaLN-zero (DiT): a zero-initialised SiLU + Linear maps a condition [B, dim] to (gate_msa,
    gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp) for each of `groups` groups of consecutive tokens
    (FlexTok's decoder: patches and registers are modulated separately), so the block starts as the identity.
    forward(x [B, L, dim], cond=None, sizes=None (group sizes), causal=False, causal_prefix=0 (with causal: a
    prefix-LM mask, imtok.layers.attention))."""

    def __init__(self, dim: int, head_dim: int = 64, mlp_ratio: float = 4.0, groups: int = 0):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"width ({dim}) must be divisible by head_dim ({head_dim})")
        self.groups = groups
        self.norm1 = _plain_norm(dim)
        self.attn = Attention(dim, dim // head_dim, qkv_bias=False, proj_bias=False, qk_norm=_plain_norm)
        self.attn.scale = 8.0 / head_dim
        self.norm2 = _plain_norm(dim)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio))
        if groups:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, groups * 6 * dim))
            nn.init.zeros_(self.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x, cond=None, sizes=None, causal=False, causal_prefix=0):
        if not self.groups:
            x = x + self.attn(self.norm1(x), causal=causal, causal_prefix=causal_prefix)
            return x + self.mlp(self.norm2(x))
        sizes = sizes or (x.shape[1],)
        if len(sizes) != self.groups:
            raise ValueError(f"this block modulates {self.groups} token groups, got sizes {sizes}")
        B, D = x.shape[0], x.shape[-1]
        gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp = \
            self.adaLN_modulation(cond).view(B, self.groups, 6, D).unbind(2)
        h = self.attn(modulate(self.norm1(x), shift_msa, scale_msa, sizes), causal=causal, causal_prefix=causal_prefix)
        x = x + _gate(h, gate_msa, sizes)
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp, sizes))
        return x + _gate(h, gate_mlp, sizes)
