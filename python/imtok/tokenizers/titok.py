"""TiTok (bytedance/1d-tokenizer modeling/titok.py) and One-D-Piece (turingmotors/One-D-Piece).

Encoder: ViT over [cls, patches, latent tokens] (learned latent tokens + their position embeddings), LayerNorm
on the latent outputs, a linear map to token_size, VQ (4096 x 12 l2-normalized for S/B/L; 8192 x 64 unnormalized
for the BL/SL single-stage configs). Decoder: ViT over [cls, grid^2 mask tokens, the first L latent tokens]
(embedded to the decoder width, plus position embeddings); the mask-token outputs become pixels:
  head="pixel" (single-stage recipe): linear to p*p*3 per patch, unpatchify, 3x3 conv;
  head="legacy" (the released two-stage checkpoints): MLP (tanh) to logits over the 1024 MaskGIT-VQGAN codes;
      with `pixel_decoder` set, softmax(logits) @ the MaskGIT codebook feeds the MaskGIT-VQGAN CNN decoder.
legacy_reshape reproduces the legacy encoder's reshape of [B, N, width] latents as [B, width, N, 1] (raw memory,
no permute) before its 1x1 conv; the legacy checkpoints were trained with it.

1D lengths: decode(z_q, lengths) keeps the first lengths[b] tokens of sample b. One int (or all equal) truncates
the sequence as One-D-Piece does; distinct per-sample lengths run in ONE pass as packed variable-length
sequences through the fused attention (cu_seqlens): each sample's sequence is exactly what decoding it alone
would see.
One-D-Piece ("tail token drop"): in training, decode keeps tokens[:end] with end ~ U{1..N}, one per batch as the
anchor does (tail_drop="batch") or one per sample (tail_drop="sample", packed).

API shapes (TiTok's): encode -> z_q [B, D, 1, N], info["min_encoding_indices"] [B, 1, N]; decode_tokens takes
[B, N] or [B, 1, N]. Images in [0, 1]; decode returns the raw (unclamped) output, or the [B, 1024, g, g] code
logits for a legacy head without pixel decoder (the stage-1 proxy-code target).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.cnn import MaskGITDecoder
from ..backbones.vit import Transformer
from ..layers.quantize import VectorQuantize
from .base import Tokenizer, check_images, check_lengths

__all__ = ["TiTokConfig", "TiTok", "OneDPiece", "MODEL_SIZES"]

# width, depth, heads of the official size names
MODEL_SIZES = {"small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}
MASKGIT_PIXEL_DECODER = {"hidden_channels": 128, "channel_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2,
                         "z_channels": 256, "num_codes": 1024}


@dataclasses.dataclass
class TiTokConfig:
    image_size: int = 256
    patch_size: int = 16
    dec_patch_size: int | None = None
    enc_width: int = 512
    enc_depth: int = 8
    enc_heads: int = 8
    dec_width: int = 512
    dec_depth: int = 8
    dec_heads: int = 8
    mlp_ratio: float = 4.0
    num_latent_tokens: int = 128
    token_size: int = 12
    codebook_size: int = 4096
    use_l2_norm: bool = True
    commitment_cost: float = 0.25
    entropy_loss_ratio: float = 0.0
    head: str = "pixel"
    legacy_reshape: bool = False
    num_legacy_codes: int = 1024
    pixel_decoder: dict | None = None
    tail_drop: str | None = None
    perturbation: dict | None = None
    # std of the linear / conv weights at init: TiTok's 0.02 suits widths of 512 and up; None = 1 / sqrt(fan_in),
    # for narrow models, where 0.02 leaves the attention path between tokens ~1e-4 of the residual stream
    # (the encoder then gets almost no gradient and the decoder learns one image for all inputs)
    init_std: float | None = 0.02

    def __post_init__(self):
        if self.dec_patch_size is None:
            self.dec_patch_size = self.patch_size
        if self.head not in ("pixel", "legacy"):
            raise ValueError(f"head must be 'pixel' or 'legacy', got {self.head!r}")
        if self.tail_drop not in (None, "batch", "sample"):
            raise ValueError(f"tail_drop must be None, 'batch' or 'sample', got {self.tail_drop!r}")
        for p in (self.patch_size, self.dec_patch_size):
            if self.image_size % p:
                raise ValueError(f"image_size {self.image_size} must be divisible by the patch size {p}")
        if self.pixel_decoder is not None and self.head != "legacy":
            raise ValueError("pixel_decoder (the MaskGIT-VQGAN decoder) goes with head='legacy'")


class TiTokEncoder(nn.Module):
    def __init__(self, c: TiTokConfig):
        super().__init__()
        self.grid_size = c.image_size // c.patch_size
        self.width, self.num_latent_tokens, self.legacy_reshape = c.enc_width, c.num_latent_tokens, c.legacy_reshape
        W = c.enc_width
        scale = W ** -0.5
        self.patch_embed = nn.Conv2d(3, W, c.patch_size, stride=c.patch_size)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, W))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size ** 2 + 1, W))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(c.num_latent_tokens, W))
        self.ln_pre = nn.LayerNorm(W)
        self.transformer = Transformer(W, c.enc_depth, c.enc_heads, c.mlp_ratio)
        self.ln_post = nn.LayerNorm(W)
        self.proj_out = nn.Linear(W, c.token_size)

    def forward(self, pixels, latent_tokens):
        B = pixels.shape[0]
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(B, 1, -1), x], 1) + self.positional_embedding
        lat = (latent_tokens + self.latent_token_positional_embedding).expand(B, -1, -1)
        x = self.transformer(self.ln_pre(torch.cat([x, lat], 1)))
        lat = self.ln_post(x[:, 1 + self.grid_size ** 2:])
        if self.legacy_reshape:
            lat = lat.reshape(B, self.width, self.num_latent_tokens).transpose(1, 2)
        return self.proj_out(lat)  # [B, N, token_size]


class TiTokDecoder(nn.Module):
    def __init__(self, c: TiTokConfig):
        super().__init__()
        self.grid_size = c.image_size // c.dec_patch_size
        self.patch_size, self.head = c.dec_patch_size, c.head
        W = c.dec_width
        scale = W ** -0.5
        self.decoder_embed = nn.Linear(c.token_size, W)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, W))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size ** 2 + 1, W))
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, W))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(c.num_latent_tokens, W))
        self.ln_pre = nn.LayerNorm(W)
        self.transformer = Transformer(W, c.dec_depth, c.dec_heads, c.mlp_ratio)
        self.ln_post = nn.LayerNorm(W)
        if c.head == "pixel":
            self.to_pixels = nn.Linear(W, self.patch_size ** 2 * 3)
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)
        else:
            self.code_head = nn.Sequential(nn.Linear(W, 2 * W), nn.Tanh(), nn.Linear(2 * W, c.num_legacy_codes))

    def forward(self, z: torch.Tensor, lengths: torch.Tensor | None = None):
        """z [B, n, token_size]; lengths None (all n tokens) or int64 [B] in [1, n] (packed pass)."""
        B, n, _ = z.shape
        G2 = self.grid_size ** 2
        x = self.decoder_embed(z) + self.latent_token_positional_embedding[:n]
        prefix = torch.cat([self.class_embedding[None], self.mask_token.expand(1, G2, -1)], 1)
        prefix = (prefix + self.positional_embedding).expand(B, -1, -1)
        seq = self.ln_pre(torch.cat([prefix, x], 1))
        if lengths is None:
            out = self.transformer(seq)[:, 1:1 + G2]
        else:
            seq_lens = 1 + G2 + lengths
            keep = torch.arange(seq.shape[1], device=seq.device)[None] < seq_lens[:, None]
            packed = self.transformer(seq[keep][None], cu_seqlens=_cu_seqlens(seq_lens))[0]
            starts = torch.cumsum(seq_lens, 0) - seq_lens
            out = packed[starts[:, None] + 1 + torch.arange(G2, device=seq.device)]
        out = self.ln_post(out)  # [B, G2, W]
        g, p = self.grid_size, self.patch_size
        if self.head == "pixel":
            patches = self.to_pixels(out).reshape(B, g, g, p, p, 3)
            img = patches.permute(0, 5, 1, 3, 2, 4).reshape(B, 3, g * p, g * p)
            return self.conv_out(img)
        return self.code_head(out).transpose(1, 2).reshape(B, -1, g, g)


def _cu_seqlens(seq_lens: torch.Tensor) -> torch.Tensor:
    return F.pad(torch.cumsum(seq_lens, 0), (1, 0)).to(torch.int32)


class TiTok(Tokenizer):
    family = "titok"
    config_class = TiTokConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        self.encoder = TiTokEncoder(c)
        self.decoder = TiTokDecoder(c)
        self.latent_tokens = nn.Parameter(c.enc_width ** -0.5 * torch.randn(c.num_latent_tokens, c.enc_width))
        self.apply(lambda m: _init_weights(m, c.init_std))
        self.quantize = self.build_quantizer()
        if c.pixel_decoder is not None:
            pd = {**MASKGIT_PIXEL_DECODER, **c.pixel_decoder}
            self.pixel_quantize = nn.Module()
            self.pixel_quantize.embedding = nn.Embedding(pd["num_codes"], pd["z_channels"])
            self.pixel_decoder = MaskGITDecoder(pd["hidden_channels"], pd["channel_mult"], pd["num_res_blocks"],
                                                pd["z_channels"])
            if pd["num_codes"] != c.num_legacy_codes:
                raise ValueError(f"pixel_decoder num_codes ({pd['num_codes']}) must equal num_legacy_codes "
                                 f"({c.num_legacy_codes})")

    def build_quantizer(self) -> nn.Module:
        c = self.config
        return VectorQuantize(c.codebook_size, c.token_size, c.commitment_cost, c.use_l2_norm,
                              c.entropy_loss_ratio, perturbation=c.perturbation)

    @property
    def num_latent_tokens(self) -> int:
        return self.config.num_latent_tokens

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def encode(self, x: torch.Tensor):
        """x [B, 3, S, S] in [0, 1] (S = image_size) -> (z_q [B, D, 1, N], info)."""
        check_images(x, "x", image_size=self.config.image_size)
        z = self.encoder(x, self.latent_tokens)
        z_q, indices, info = self.quantize(z)
        info["min_encoding_indices"] = indices[:, None]
        return z_q.transpose(1, 2)[:, :, None], info

    def decode(self, z_q: torch.Tensor, lengths=None):
        """z_q [B, D, 1, n] (n <= N) -> images [B, 3, S, S]; sample b decoded from its first lengths[b] tokens."""
        if not isinstance(z_q, torch.Tensor) or z_q.dim() != 4 or z_q.shape[1] != self.config.token_size \
                or z_q.shape[2] != 1 or not 1 <= z_q.shape[3] <= self.num_latent_tokens:
            raise ValueError(f"z_q must have shape [B, {self.config.token_size}, 1, n] with 1 <= n <= "
                             f"{self.num_latent_tokens}, got {tuple(getattr(z_q, 'shape', ()))}")
        return self._decode(z_q[:, :, 0].transpose(1, 2), lengths)

    def decode_tokens(self, tokens: torch.Tensor, lengths=None):
        """tokens [B, n] or [B, 1, n] in [0, K), n <= N -> images."""
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 3 and tokens.shape[1] == 1:
            tokens = tokens[:, 0]
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or not 1 <= tokens.shape[1] <= self.num_latent_tokens:
            raise ValueError(f"tokens must have shape [B, n] or [B, 1, n] with 1 <= n <= {self.num_latent_tokens}, "
                             f"got {tuple(getattr(tokens, 'shape', ()))}")
        return self._decode(self.quantize.lookup(tokens), lengths)

    def _decode(self, z: torch.Tensor, lengths):
        B, n, _ = z.shape
        lengths = check_lengths(lengths, B, n, z.device)
        if lengths is None and self.training and self.config.tail_drop is not None:
            lengths = self.sample_lengths(B, n, z.device)
        if isinstance(lengths, torch.Tensor) and B and bool((lengths == lengths[0]).all()):
            lengths = int(lengths[0])
        if isinstance(lengths, int):
            z, lengths = z[:, :lengths], None
        out = self.decoder(z, lengths)
        if self.config.head == "legacy" and self.config.pixel_decoder is not None:
            features = torch.einsum("nchw,cd->ndhw", out.softmax(1), self.pixel_quantize.embedding.weight)
            out = self.pixel_decoder(features)
        return out

    def sample_lengths(self, batch_size: int, num_tokens: int, device=None):
        """Tail token drop: one end ~ U{1..N} for the batch ("batch", One-D-Piece) or one per sample."""
        if self.config.tail_drop == "batch":
            return int(torch.randint(1, num_tokens + 1, (1,)))
        return torch.randint(1, num_tokens + 1, (batch_size,), device=device)

    def forward(self, x: torch.Tensor, lengths=None):
        z_q, info = self.encode(x)
        return self.decode(z_q, lengths=lengths), info


class OneDPiece(TiTok):
    """TiTok with tail token drop in training (tail_drop "batch" by default, as the anchor)."""
    family = "one-d-piece"

    def __init__(self, config=None, **overrides):
        if config is None:
            config = TiTokConfig(num_latent_tokens=256, tail_drop="batch")
        super().__init__(config, **overrides)


def _init_weights(module, std: float | None = 0.02):
    """TiTok's init: trunc-normal(std) linear / conv weights (std None: 1 / sqrt(fan_in)), zero biases,
    LayerNorm (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, mean=0.0, std=module.weight[0].numel() ** -0.5 if std is None else std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
