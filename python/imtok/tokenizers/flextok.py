"""FlexTok (apple/ml-flextok, Bachmann et al. 2025): images to ordered 1D sequences of 1..N discrete tokens.

Encoder: a ViT over [patches; N learned registers] with FlexTok's "causal_last" mask (patches attend to all
patches; register i attends to all patches and to registers 0..i), one fused attention call with the causal mask
widened to the patches (imtok.layers.attention causal_prefix) and no L x L mask; the registers' outputs go through a
LayerNorm and a linear map to 6 channels, then FSQ [8, 8, 8, 5, 5, 5] (64000 codes, imtok_cuda.vq.fsq).
Blocks: FlexTok's (no-affine LayerNorms, qk-norm, SwiGLU, no biases, attention scale 8 / head_dim;
imtok.backbones.ModulatedBlock).

Nested dropout: the decoder sees the codes projected to its width, positions >= keep_k replaced by a learned
mask token (the length stays N), then register position embeddings. In training keep_k is drawn per sample
(`nested_dropout`, the anchor's MaskedNestedDropout.sample_keep_k): "uniform" U{1..N}; "pow2" uniform over the
powers of two 1, 2, 4, ..., N (N a power of two); "uniform_pow2" k ~ U{1..N} rounded up to a power of two
(capped at N). At decode time keep_k = lengths[b]: sample b is decoded from its first lengths[b] tokens, all
samples in one batched pass (the sequence length never changes, so this is exactly decoding each alone).

Decoders (`decoder`):
  "flow" (the anchor): a rectified-flow ViT over [noised image patches; registers], AdaLN-zero on the timestep
      embedding with separate modulation for the patches and the registers (ModulatedBlock, groups=2), a
      zero-initialised modulated linear head predicting the velocity v = noise - image. Training: t =
      sigmoid(n), n ~ N(0, 1) (logit-normal), x_t = t noise + (1 - t) x, loss mse(v_pred, noise - x); the
      registers are replaced by a learned null condition with probability cond_dropout per sample (for CFG).
      Sampling (the anchor's MinRFPipeline): x_1 ~ N(0, I); for i = steps..1: t = i / steps,
      x <- x - v(x, t) / steps; with guidance_scale g != 1 the conditional and null-condition passes run as one
      batch of 2B and combine as CFG, uncond + g (cond - uncond), or with norm_guidance as APG (Sadat et al.
      2024, the anchor's normalized_guidance: momentum -0.5, norm threshold 2.5, eta 0, per sample).
      Defaults are the pipeline's (25 steps, g = 1); the anchor's README decodes with 20 steps, g = 7.5, APG.
      APG's norm threshold 2.5 was set for 32 x 32 x 16 VAE latents: on pixels (256 x 256 x 3) it clips more.
  "pixel": a ViT over [P learned patch queries; registers] whose patch outputs map linearly to pixels (TiTok's
      single-stage head, without its conv): trains in CPU minutes with an L2 loss.
Unlike the anchor, both work on pixels in [-1, 1] (images are [0, 1] at the API): the anchor's flow decoder
works on the latents of a frozen f8 VAE that cannot be downloaded here, and has no REPA loss (DINOv2 weights).
The published patch size 16 on pixels gives the anchor's 256 patches at 256 px (2 x 2 patches of f8 latents).

API (the other tokenizers'): encode(x) -> (z_q [B, 6, 1, N] codes, info with "min_encoding_indices" [B, 1, N]);
decode(z_q, lengths=None, **sampling), decode_tokens(tokens [B, n] or [B, 1, n], lengths=None, **sampling),
with n <= N tokens (positions >= n are mask tokens); forward(x, lengths=None) -> (images, info). In training
info["rec_loss"] holds the flow-matching loss (flow decoder; the returned images are then the one-step
estimates x_t - t v) and "quantizer_loss" is 0 (FSQ has none).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.vit import ModulatedBlock, modulate
from ..layers.quantize import FiniteScalarQuantize
from .base import Tokenizer, check_images, check_lengths

__all__ = ["FlexTokConfig", "FlexTok", "sample_keep_k", "normalized_guidance"]

NESTED_DROPOUT_MODES = ("uniform", "pow2", "uniform_pow2")
_ZERO_INIT = ("adaLN_modulation", "head_modulation", "to_velocity")  # AdaLN-zero: the flow model starts at v = 0


@dataclasses.dataclass
class FlexTokConfig:
    image_size: int = 256
    patch_size: int = 16
    num_registers: int = 256
    enc_width: int = 768
    enc_depth: int = 12
    dec_width: int = 768
    dec_depth: int = 12
    head_dim: int = 64
    mlp_ratio: float = 4.0
    levels: tuple = (8, 8, 8, 5, 5, 5)
    decoder: str = "flow"
    nested_dropout: str | None = "pow2"  # None: no nested dropout in training
    cond_dropout: float = 0.1  # flow decoder: probability of the null condition per training sample
    sample_steps: int = 25
    guidance_scale: float = 1.0
    norm_guidance: bool = False

    def __post_init__(self):
        self.levels = tuple(int(L) for L in self.levels)
        if self.decoder not in ("flow", "pixel"):
            raise ValueError(f"decoder must be 'flow' or 'pixel', got {self.decoder!r}")
        if self.nested_dropout not in (None, *NESTED_DROPOUT_MODES):
            raise ValueError(f"nested_dropout must be None or one of {NESTED_DROPOUT_MODES}, got {self.nested_dropout!r}")
        if self.nested_dropout == "pow2" and self.num_registers & (self.num_registers - 1):
            raise ValueError(f"nested_dropout='pow2' needs num_registers a power of two, got {self.num_registers}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        if not 1 <= self.num_registers:
            raise ValueError(f"num_registers must be >= 1, got {self.num_registers}")
        for name in ("enc_width", "dec_width"):
            if getattr(self, name) % self.head_dim:
                raise ValueError(f"{name} ({getattr(self, name)}) must be divisible by head_dim ({self.head_dim})")


def sample_keep_k(mode: str, batch_size: int, n: int, generator=None) -> torch.Tensor:
    """Per-sample number of kept registers (int64 [B], in [1, n]) as the anchor's MaskedNestedDropout draws it."""
    if mode == "uniform":
        return torch.randint(1, n + 1, (batch_size,), generator=generator)
    if mode == "pow2":
        powers = 2 ** torch.arange(n.bit_length())
        powers = powers[powers <= n]
        return powers[torch.randint(0, len(powers), (batch_size,), generator=generator)]
    if mode == "uniform_pow2":
        k = torch.randint(1, n + 1, (batch_size,), generator=generator)
        up = 2 ** torch.ceil(torch.log2(k.double())).long()  # k itself when k is a power of two
        return up.clamp(max=n)
    raise ValueError(f"nested dropout mode must be one of {NESTED_DROPOUT_MODES}, got {mode!r}")


def normalized_guidance(cond, uncond, scale: float, running=None, momentum: float = -0.5, eta: float = 0.0,
                        norm_threshold: float = 2.5):
    """APG (Sadat et al. 2024) per sample over all non-batch dims, as the anchor's normalized_guidance:
    diff = cond - uncond (with momentum: running = diff + momentum * running, diff = running); rescaled to norm
    <= norm_threshold; split into the parts parallel / orthogonal to cond (in fp64);
    cond + (scale - 1) (orthogonal + eta parallel). Returns (guided, running)."""
    diff = cond - uncond
    if running is not None:
        running = diff + momentum * running
        diff = running
    dims = tuple(range(1, diff.dim()))
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=dims, keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(norm), norm_threshold / norm)
    d64, unit = diff.double(), F.normalize(cond.double().flatten(1), dim=1).view_as(cond)
    parallel = (d64 * unit).sum(dims, keepdim=True) * unit
    orthogonal = d64 - parallel
    update = (orthogonal + eta * parallel).to(cond.dtype)
    return cond + (scale - 1) * update, running


def _patchify(img, p):
    B, C, H, W = img.shape
    return img.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def _unpatchify(tokens, p, grid):
    B = tokens.shape[0]
    return tokens.reshape(B, grid, grid, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(B, 3, grid * p, grid * p)


def _trunc_normal(*shape):
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(*shape), std=0.02))


class FlexTokEncoder(nn.Module):
    def __init__(self, c: FlexTokConfig):
        super().__init__()
        W, self.num_patches = c.enc_width, (c.image_size // c.patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, W, c.patch_size, stride=c.patch_size)
        self.pos_embed = _trunc_normal(self.num_patches, W)
        self.registers = _trunc_normal(c.num_registers, W)
        self.blocks = nn.ModuleList([ModulatedBlock(W, c.head_dim, c.mlp_ratio) for _ in range(c.enc_depth)])
        self.norm = nn.LayerNorm(W, elementwise_affine=False, bias=False)
        self.to_latent = nn.Linear(W, len(c.levels))

    def forward(self, x):
        """x [B, 3, H, W] in [-1, 1] -> [B, N, 6] (before FSQ)."""
        B = x.shape[0]
        patches = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        seq = torch.cat([patches, self.registers.expand(B, -1, -1)], 1)
        for blk in self.blocks:
            seq = blk(seq, causal=True, causal_prefix=self.num_patches)
        return self.to_latent(self.norm(seq[:, self.num_patches:]))


class _RegisterInput(nn.Module):
    """Codes [B, n, 6] -> decoder registers [B, N, W]: linear, nested dropout (positions >= keep_k and >= n get
    the learned mask token), register position embeddings."""

    def __init__(self, c: FlexTokConfig, width: int):
        super().__init__()
        self.num_registers = c.num_registers
        self.from_latent = nn.Linear(len(c.levels), width)
        self.mask_token = _trunc_normal(width)
        self.pos_embed = _trunc_normal(c.num_registers, width)

    def forward(self, codes, keep_k=None):
        B, n, _ = codes.shape
        r = self.from_latent(codes)
        if n < self.num_registers:
            r = torch.cat([r, r.new_zeros(B, self.num_registers - n, r.shape[-1])], 1)
        keep = torch.full((B,), n, dtype=torch.long, device=r.device) if keep_k is None else keep_k.clamp(max=n)
        visible = torch.arange(self.num_registers, device=r.device)[None] < keep[:, None]
        return torch.where(visible[..., None], r, self.mask_token) + self.pos_embed


class PixelDecoder(nn.Module):
    """ViT over [P learned patch queries; N registers] -> patches -> image in [-1, 1] units."""

    def __init__(self, c: FlexTokConfig):
        super().__init__()
        W = c.dec_width
        self.patch_size, self.grid = c.patch_size, c.image_size // c.patch_size
        self.registers = _RegisterInput(c, W)
        self.patch_queries = _trunc_normal(self.grid ** 2, W)
        self.blocks = nn.ModuleList([ModulatedBlock(W, c.head_dim, c.mlp_ratio) for _ in range(c.dec_depth)])
        self.norm = nn.LayerNorm(W, elementwise_affine=False, bias=False)
        self.to_pixels = nn.Linear(W, c.patch_size ** 2 * 3)

    def forward(self, codes, keep_k=None):
        regs = self.registers(codes, keep_k)
        P = self.grid ** 2
        seq = torch.cat([self.patch_queries.expand(regs.shape[0], -1, -1), regs], 1)
        for blk in self.blocks:
            seq = blk(seq)
        return _unpatchify(self.to_pixels(self.norm(seq[:, :P])), self.patch_size, self.grid)


class TimestepEmbedder(nn.Module):
    """DiT's sinusoidal embedding of t in [0, 1] (the anchor's: 256 frequencies, max period 256, t scaled by
    1000, cos then sin), then Linear-SiLU-Linear."""

    def __init__(self, width: int, frequencies: int = 256, max_period: float = 256.0):
        super().__init__()
        half = frequencies // 2
        self.register_buffer("freqs", 1000.0 * torch.exp(-math.log(max_period) * torch.arange(half) / half),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t):
        args = t.float()[:, None] * self.freqs
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], -1))


class FlowDecoder(nn.Module):
    """Rectified-flow velocity model: AdaLN-zero ViT over [noised patches; registers] (separate modulation)."""

    def __init__(self, c: FlexTokConfig):
        super().__init__()
        W = c.dec_width
        self.patch_size, self.grid = c.patch_size, c.image_size // c.patch_size
        self.registers = _RegisterInput(c, W)
        self.null_cond = _trunc_normal(W)
        self.patch_in = nn.Linear(c.patch_size ** 2 * 3, W)
        self.pos_embed = _trunc_normal(self.grid ** 2, W)
        self.time_embed = TimestepEmbedder(W)
        self.blocks = nn.ModuleList([ModulatedBlock(W, c.head_dim, c.mlp_ratio, groups=2)
                                     for _ in range(c.dec_depth)])
        self.norm = nn.LayerNorm(W, elementwise_affine=False, bias=False)
        self.head_modulation = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.to_velocity = nn.Linear(W, c.patch_size ** 2 * 3)
        for lin in (self.head_modulation[-1], self.to_velocity):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def null_registers(self, batch_size: int):
        return self.null_cond.expand(batch_size, self.registers.num_registers, -1)

    def forward(self, x_t, t, regs):
        """x_t [B, 3, H, W], t [B] in [0, 1], regs [B, N, W] -> velocity [B, 3, H, W]."""
        B, P = x_t.shape[0], self.grid ** 2
        patches = self.patch_in(_patchify(x_t, self.patch_size)) + self.pos_embed
        seq = torch.cat([patches, regs], 1)
        cond = self.time_embed(t)
        sizes = (P, regs.shape[1])
        for blk in self.blocks:
            seq = blk(seq, cond, sizes)
        shift, scale = self.head_modulation(cond).view(B, 1, 2, -1).unbind(2)
        out = self.to_velocity(modulate(self.norm(seq[:, :P]), shift, scale, (P,)))
        return _unpatchify(out, self.patch_size, self.grid)

    @torch.no_grad()
    def sample(self, regs, steps: int, guidance_scale=1.0, norm_guidance: bool = False, generator=None,
               noise=None):
        """Euler sampler of the anchor's MinRFPipeline from t = 1 (noise) to 0 -> image in [-1, 1] units."""
        B, S = regs.shape[0], self.grid * self.patch_size
        x = noise if noise is not None else torch.randn(B, 3, S, S, generator=generator, device=regs.device,
                                                        dtype=regs.dtype)
        do_cfg = callable(guidance_scale) or guidance_scale != 1.0
        both = torch.cat([regs, self.null_registers(B)]) if do_cfg else regs
        running = torch.zeros_like(x) if norm_guidance else None
        for i in range(steps, 0, -1):
            t = i / steps
            if do_cfg:
                g = guidance_scale(t) if callable(guidance_scale) else guidance_scale
                cond, uncond = self(torch.cat([x, x]), x.new_full((2 * B,), t), both).chunk(2)
                if norm_guidance:
                    v, running = normalized_guidance(cond, uncond, g, running)
                else:
                    v = uncond + g * (cond - uncond)
            else:
                v = self(x, x.new_full((B,), t), regs)
            x = x - v / steps
        return x


class FlexTok(Tokenizer):
    family = "flextok"
    config_class = FlexTokConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        self.encoder = FlexTokEncoder(c)
        self.quantize = FiniteScalarQuantize(c.levels)
        self.decoder = FlowDecoder(c) if c.decoder == "flow" else PixelDecoder(c)
        for name, m in self.named_modules():  # the anchor's "xavier" init; AdaLN-zero layers stay zero
            if isinstance(m, nn.Linear) and not any(z in name for z in _ZERO_INIT):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def num_latent_tokens(self) -> int:
        return self.config.num_registers

    @property
    def codebook_size(self) -> int:
        return self.quantize.codebook_size

    # ---- encode ------------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor):
        """x [B, 3, S, S] in [0, 1] -> (z_q [B, 6, 1, N] FSQ codes, info)."""
        check_images(x, "x", image_size=self.config.image_size, multiple_of=self.config.patch_size)
        codes, indices, info = self.quantize(self.encoder(x * 2 - 1))
        info["min_encoding_indices"] = indices[:, None]
        info["quantizer_loss"] = codes.new_zeros(())
        return codes.transpose(1, 2)[:, :, None], info

    # ---- decode ------------------------------------------------------------------------------------------
    def decode(self, z_q: torch.Tensor, lengths=None, **sampling):
        """z_q [B, 6, 1, n] (n <= N) -> images [B, 3, S, S] (raw, unclamped); sample b decoded from its first
        lengths[b] tokens. Flow decoder: sampling = steps, guidance_scale, norm_guidance, generator, noise."""
        d, N = len(self.config.levels), self.num_latent_tokens
        if not isinstance(z_q, torch.Tensor) or z_q.dim() != 4 or z_q.shape[1] != d or z_q.shape[2] != 1 \
                or not 1 <= z_q.shape[3] <= N:
            raise ValueError(f"z_q must have shape [B, {d}, 1, n] with 1 <= n <= {N}, got "
                             f"{tuple(getattr(z_q, 'shape', ()))}")
        return self._decode(z_q[:, :, 0].transpose(1, 2), lengths, **sampling)

    def decode_tokens(self, tokens: torch.Tensor, lengths=None, **sampling):
        """tokens [B, n] or [B, 1, n] in [0, 64000), n <= N -> images."""
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 3 and tokens.shape[1] == 1:
            tokens = tokens[:, 0]
        N = self.num_latent_tokens
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or not 1 <= tokens.shape[1] <= N:
            raise ValueError(f"tokens must have shape [B, n] or [B, 1, n] with 1 <= n <= {N}, got "
                             f"{tuple(getattr(tokens, 'shape', ()))}")
        return self._decode(self.quantize.lookup(tokens), lengths, **sampling)

    def _keep_k(self, lengths, batch_size: int, n: int, device):
        lengths = check_lengths(lengths, batch_size, n, device)
        if isinstance(lengths, int):
            lengths = torch.full((batch_size,), lengths, dtype=torch.long, device=device)
        return lengths

    def _decode(self, codes, lengths, steps=None, guidance_scale=None, norm_guidance=None, generator=None,
                noise=None):
        keep_k = self._keep_k(lengths, codes.shape[0], codes.shape[1], codes.device)
        if self.config.decoder == "pixel":
            return self.decoder(codes, keep_k) * 0.5 + 0.5
        c = self.config
        steps = c.sample_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        size = (codes.shape[0], 3, c.image_size, c.image_size)
        if noise is not None and (not isinstance(noise, torch.Tensor) or tuple(noise.shape) != size):
            raise ValueError(f"noise must be a tensor of shape {list(size)}, got {tuple(getattr(noise, 'shape', ()))}")
        regs = self.decoder.registers(codes, keep_k)
        out = self.decoder.sample(regs, steps,
                                  c.guidance_scale if guidance_scale is None else guidance_scale,
                                  c.norm_guidance if norm_guidance is None else norm_guidance, generator, noise)
        return out * 0.5 + 0.5

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, lengths=None, **sampling):
        """Eval: decode(encode(x)). Training: nested dropout (keep_k drawn per sample, or lengths when given);
        the pixel decoder returns its reconstruction, the flow decoder the one-step estimate of x with
        info["rec_loss"] = the flow-matching loss."""
        z_q, info = self.encode(x)
        if not self.training:
            return self.decode(z_q, lengths, **sampling), info
        codes = z_q[:, :, 0].transpose(1, 2)
        B, N = codes.shape[:2]
        keep_k = self._keep_k(lengths, B, N, codes.device)
        if keep_k is None and self.config.nested_dropout is not None:
            keep_k = sample_keep_k(self.config.nested_dropout, B, N).to(codes.device)
        if keep_k is not None:
            info["keep_k"] = keep_k
        if self.config.decoder == "pixel":
            return self.decoder(codes, keep_k) * 0.5 + 0.5, info
        dec = self.decoder
        regs = dec.registers(codes, keep_k)
        if self.config.cond_dropout > 0:
            drop = torch.rand(B, device=regs.device) < self.config.cond_dropout
            regs = torch.where(drop[:, None, None], dec.null_registers(B), regs)
        clean = x * 2 - 1
        t = torch.sigmoid(torch.randn(B, device=x.device))  # logit-normal
        noise = torch.randn_like(clean)
        tb = t[:, None, None, None]
        x_t = tb * noise + (1 - tb) * clean
        v = dec(x_t, t, regs)
        info["rec_loss"] = F.mse_loss(v, noise - clean)
        info["t"] = t
        return (x_t - tb * v) * 0.5 + 0.5, info
