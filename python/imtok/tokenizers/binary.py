"""Binary 1D tokenizer (Instella-T2I's 1D binary image tokenizer): TiTok's ViT encoder / decoder with each latent
token a vector of `token_size` bits instead of a codebook index.

    tok = imtok.tokenizers.create("binary-b-128")     # 128 tokens x 64 bits, 256 px
    z_q, info = tok.encode(x)                          # z_q [B, 64, 1, 128] float bits; x in [0, 1]
    bits = info["min_encoding_indices"]                # int64 [B, 1, 128, 64] in {0, 1}
    images = tok.decode_tokens(bits, lengths=torch.tensor([128, 32, 64]))

Encoder: TiTok's (ViT over [cls, patches, latent tokens]; proj_out to token_size bit logits). Quantizer:
imtok.layers.quantize.BinaryQuantize (sigmoid > 0.5 in eval; Bernoulli(sigmoid(z / T)) with a straight-through
estimator in training; quantizer_loss = binary_loss_weight * mean(p (1 - p))). Decoder: TiTok's pixel decoder;
its decoder_embed is the bits' embedding (bits @ E + b). Tokens are ordered (1D), so per-sample lengths work as
for TiTok / One-D-Piece: one packed pass through the fused attention.

Differences from Instella-T2I: its tokenizer adds 2 x 2 token-merging down / up-sampling layers for 1024 px
inputs and is trained at high resolution; here the published token budget (128 x 64 bits) is kept on TiTok's
256 px ViT-B layout (the encoder and decoder sizes are this project's choice).
"""
from __future__ import annotations

import dataclasses

import torch

from ..layers.quantize import BinaryQuantize
from .titok import TiTok, TiTokConfig

__all__ = ["BinaryTokenizerConfig", "BinaryTokenizer"]


@dataclasses.dataclass
class BinaryTokenizerConfig(TiTokConfig):
    """TiTok's config; token_size is the number of bits per token. codebook_size, use_l2_norm,
    commitment_cost and entropy_loss_ratio do not apply."""
    token_size: int = 64
    binary_temperature: float = 1.0
    binary_loss_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.head != "pixel":
            raise ValueError(f"the binary tokenizer has the pixel head only, got head={self.head!r}")
        if self.perturbation is not None or self.entropy_loss_ratio:
            raise ValueError("perturbation and entropy_loss_ratio are codebook options; the binary tokenizer "
                             "has no codebook")
        if not self.binary_temperature > 0:
            raise ValueError(f"binary_temperature must be > 0, got {self.binary_temperature}")


class BinaryTokenizer(TiTok):
    family = "binary"
    config_class = BinaryTokenizerConfig

    def build_quantizer(self):
        c = self.config
        return BinaryQuantize(c.token_size, c.binary_temperature, c.binary_loss_weight)

    @property
    def codebook_size(self):
        """None: a token is a vector of bits, not an index into a codebook (2^64 codes at the published size;
        evaluation and generator code that count or embed codes must not take it for one)."""
        return None

    @property
    def bits_per_token(self) -> int:
        return self.config.token_size

    def decode_tokens(self, tokens: torch.Tensor, lengths=None):
        """tokens [B, n, bits] or [B, 1, n, bits] integers in {0, 1}, n <= N -> images."""
        bits, N = self.config.token_size, self.num_latent_tokens
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 4 and tokens.shape[1] == 1:
            tokens = tokens[:, 0]
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3 or tokens.shape[2] != bits \
                or not 1 <= tokens.shape[1] <= N:
            raise ValueError(f"tokens must have shape [B, n, {bits}] or [B, 1, n, {bits}] with 1 <= n <= {N}, got "
                             f"{tuple(getattr(tokens, 'shape', ()))}")
        return self._decode(self.quantize.lookup(tokens), lengths)
