"""CNN encoder / decoder blocks of the VQGAN family.

CNNEncoder / CNNDecoder: LlamaGen's layout (taming lineage) with LlamaGen's module names, so its state dict
loads as is: conv_in, conv_blocks[i].res[j] / .attn[j] / .downsample|.upsample, mid[0..2], norm_out, conv_out.
GroupNorm(32, eps 1e-6), swish, downsampling by a stride-2 conv after zero padding (0, 1, 0, 1), upsampling by
nearest x2 then a conv, single-head spatial self-attention at the lowest resolution (computed with
imtok.layers.attention).

MaskGITDecoder: the MaskGIT-VQGAN pixel decoder that TiTok's legacy (two-stage) checkpoints carry, with its
names (conv_in, mid[j], up[i].block[j], up[i].upsample_conv, norm_out, conv_out). Its ResnetBlock applies the
channel shortcut to the block's output instead of its input when the channel count changes; the checkpoints were
trained that way, so it is kept.
"""
import torch.nn.functional as F
from torch import nn

from ..layers import attention

__all__ = ["ResnetBlock", "AttnBlock", "CNNEncoder", "CNNDecoder", "MaskGITDecoder"]


def _norm(channels: int) -> nn.GroupNorm:
    if channels % 32:
        raise ValueError(f"channel counts must be multiples of 32 (GroupNorm with 32 groups), got {channels}")
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, 1x1-conv projections q, k, v, proj_out."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (p(h).reshape(B, 1, C, H * W).transpose(2, 3) for p in (self.q, self.k, self.v))
        out = attention(q, k, v, scale=C ** -0.5)
        return x + self.proj_out(out.transpose(2, 3).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class CNNEncoder(nn.Module):
    """[B, in_channels, H, W] -> [B, z_channels, H / 2^(L-1), W / 2^(L-1)] with L = len(ch_mult)."""

    def __init__(self, in_channels: int = 3, ch: int = 128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 z_channels: int = 256, dropout: float = 0.0):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1,) + tuple(ch_mult)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for i in range(self.num_resolutions):
            level = nn.Module()
            level.res, level.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[i], ch * ch_mult[i]
            for _ in range(num_res_blocks):
                level.res.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if i == self.num_resolutions - 1:
                    level.attn.append(AttnBlock(block_in))
            if i != self.num_resolutions - 1:
                level.downsample = Downsample(block_in)
            self.conv_blocks.append(level)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout), AttnBlock(block_in),
                                  ResnetBlock(block_in, block_in, dropout)])
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for i, level in enumerate(self.conv_blocks):
            for j in range(self.num_res_blocks):
                h = level.res[j](h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != self.num_resolutions - 1:
                h = level.downsample(h)
        for blk in self.mid:
            h = blk(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class CNNDecoder(nn.Module):
    """[B, z_channels, h, w] -> [B, out_channels, h 2^(L-1), w 2^(L-1)]. level_attention=False drops the
    attention blocks of the lowest-resolution level (GPSToken's decoder: attn_resolutions []; mid keeps its
    attention)."""

    def __init__(self, z_channels: int = 256, ch: int = 128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 dropout: float = 0.0, out_channels: int = 3, level_attention: bool = True):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout), AttnBlock(block_in),
                                  ResnetBlock(block_in, block_in, dropout)])
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(self.num_resolutions)):
            level = nn.Module()
            level.res, level.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i]
            for _ in range(num_res_blocks + 1):
                level.res.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if level_attention and i == self.num_resolutions - 1:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
            self.conv_blocks.append(level)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for blk in self.mid:
            h = blk(h)
        for i, level in enumerate(self.conv_blocks):
            for j in range(self.num_res_blocks + 1):
                h = level.res[j](h)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != self.num_resolutions - 1:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class _MaskGITResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(out_channels, out_channels, 1, bias=False)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        residual = self.nin_shortcut(h) if self.in_channels != self.out_channels else x  # MaskGIT's quirk
        return h + residual


class _MaskGITUpBlock(nn.Module):
    def __init__(self, block_in: int, block_out: int, num_res_blocks: int, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList()
        for _ in range(num_res_blocks):
            self.block.append(_MaskGITResnetBlock(block_in, block_out))
            block_in = block_out
        if upsample:
            self.upsample_conv = nn.Conv2d(block_out, block_out, 3, padding=1)

    def forward(self, h):
        for blk in self.block:
            h = blk(h)
        if hasattr(self, "upsample_conv"):
            h = self.upsample_conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return h


class MaskGITDecoder(nn.Module):
    """MaskGIT-VQGAN decoder (no attention): z [B, z_channels, h, w] -> [B, 3, h 2^(L-1), w 2^(L-1)]."""

    def __init__(self, hidden_channels: int = 128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 z_channels: int = 256, out_channels: int = 3):
        super().__init__()
        L = len(channel_mult)
        block_in = hidden_channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList([_MaskGITResnetBlock(block_in, block_in) for _ in range(num_res_blocks)])
        self.up = nn.ModuleList()
        for i in range(L):
            up_in = hidden_channels * channel_mult[min(i + 1, L - 1)]
            self.up.append(_MaskGITUpBlock(up_in, hidden_channels * channel_mult[i], num_res_blocks, upsample=i != 0))
        block_out = hidden_channels * channel_mult[0]
        self.norm_out = _norm(block_out)
        self.conv_out = nn.Conv2d(block_out, out_channels, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for blk in self.mid:
            h = blk(h)
        for blk in reversed(self.up):
            h = blk(h)
        return self.conv_out(F.silu(self.norm_out(h)))
