"""VQGAN in LlamaGen's layout (FoundationVision/LlamaGen tokenizer/tokenizer_image/vq_model.py).

CNN encoder -> quant_conv (z_channels -> codebook_embed_dim) -> VQ (16384 x 8, l2-normalized, beta 0.25) ->
post_quant_conv -> CNN decoder. VQ-16: ch 128, ch_mult [1, 1, 2, 2, 4] (16x16 tokens at 256 px); VQ-8:
ch_mult [1, 2, 2, 4] (32x32). The module names are LlamaGen's, so its state dict loads directly
(imtok.tokenizers.load_official("llamagen-vq", ...)).

Differences from LlamaGen at the API: images are [0, 1] (LlamaGen works in [-1, 1]; converted here), tokens in
info["min_encoding_indices"] have shape [B, h, w] (LlamaGen: flat [B*h*w]), decode_code(indices, shape)
returns [0, 1] images, the quantizer losses are also returned in eval, and the codebook-usage ring buffer
(codebook_used) is not kept (info["perplexity"] reports the batch's usage).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from ..backbones.cnn import CNNDecoder, CNNEncoder
from ..layers.quantize import VectorQuantize
from .base import Tokenizer, check_images

__all__ = ["VQGANConfig", "VQGAN"]


@dataclasses.dataclass
class VQGANConfig:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: tuple = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple = (1, 1, 2, 2, 4)
    z_channels: int = 256
    dropout_p: float = 0.0
    ch: int = 128
    num_res_blocks: int = 2
    perturbation: dict | None = None

    def __post_init__(self):
        self.encoder_ch_mult = tuple(self.encoder_ch_mult)
        self.decoder_ch_mult = tuple(self.decoder_ch_mult)
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ValueError("encoder_ch_mult and decoder_ch_mult must have the same length (same downsampling)")


class VQGAN(Tokenizer):
    family = "vqgan"
    config_class = VQGANConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        self.encoder = CNNEncoder(3, c.ch, c.encoder_ch_mult, c.num_res_blocks, c.z_channels, c.dropout_p)
        self.decoder = CNNDecoder(c.z_channels, c.ch, c.decoder_ch_mult, c.num_res_blocks, c.dropout_p)
        self.quantize = VectorQuantize(c.codebook_size, c.codebook_embed_dim, c.commit_loss_beta,
                                       c.codebook_l2_norm, c.entropy_loss_ratio, perturbation=c.perturbation)
        self.quant_conv = nn.Conv2d(c.z_channels, c.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.codebook_embed_dim, c.z_channels, 1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.encoder_ch_mult) - 1)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def encode(self, x: torch.Tensor):
        """x [B, 3, H, W] in [0, 1], H and W divisible by the downsampling factor -> (z_q [B, D, h, w], info)."""
        check_images(x, "x", multiple_of=self.downsample_factor)
        h = self.quant_conv(self.encoder(x * 2 - 1))
        z_q, indices, info = self.quantize(h.permute(0, 2, 3, 1))
        info["min_encoding_indices"] = indices
        return z_q.permute(0, 3, 1, 2), info

    def decode(self, z_q: torch.Tensor, lengths=None):
        """z_q [B, D, h, w] -> images [B, 3, h f, w f] in [0, 1] (not clamped)."""
        _no_lengths(lengths)
        if z_q.dim() != 4 or z_q.shape[1] != self.config.codebook_embed_dim:
            raise ValueError(f"z_q must have shape [B, {self.config.codebook_embed_dim}, h, w], got {tuple(z_q.shape)}")
        return (self.decoder(self.post_quant_conv(z_q)) + 1) / 2

    def decode_tokens(self, tokens: torch.Tensor, lengths=None):
        """tokens [B, h, w] (or [B, h*w] for a square grid) in [0, K) -> images in [0, 1]."""
        _no_lengths(lengths)
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 2:
            side = math.isqrt(tokens.shape[1])
            if side * side != tokens.shape[1]:
                raise ValueError(f"tokens [B, N] must hold a square grid (N a square), got N = {tokens.shape[1]}; "
                                 "pass [B, h, w]")
            tokens = tokens.reshape(tokens.shape[0], side, side)
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
            raise ValueError(f"tokens must have shape [B, h, w], got {getattr(tokens, 'shape', None)}")
        z_q = self.quantize.lookup(tokens).permute(0, 3, 1, 2)
        return self.decode(z_q)

    def decode_code(self, code_b: torch.Tensor, shape=None, channel_first: bool = True):
        """LlamaGen's decode_code: indices (flat or any shape) and shape = (B, C, h, w) (channel_first) or
        (B, h, w, C) -> images in [0, 1]."""
        z_q = self.quantize.lookup(code_b)
        if shape is not None:
            if channel_first:
                z_q = z_q.reshape(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2)
            else:
                z_q = z_q.reshape(shape).permute(0, 3, 1, 2)
        elif z_q.dim() == 4:
            z_q = z_q.permute(0, 3, 1, 2)
        else:
            raise ValueError("decode_code needs shape=(B, C, h, w) unless code_b has shape [B, h, w]")
        return self.decode(z_q.contiguous())


def _no_lengths(lengths):
    if lengths is not None:
        raise ValueError("lengths applies to 1D tokenizers (TiTok, One-D-Piece); VQGAN tokens form a 2D grid")
