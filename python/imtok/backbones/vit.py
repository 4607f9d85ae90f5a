"""Pre-norm ViT blocks with timm's names (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2) over
imtok.layers.Attention, so a key mask or packed sequences (cu_seqlens) reach the fused attention."""
from torch import nn

from ..layers import Attention

__all__ = ["Mlp", "Block", "Transformer"]


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
