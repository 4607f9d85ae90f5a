"""GPSToken (xtudbxk/GPSToken models/gpstoken.py): an image as N Gaussian tokens, geometry + texture.

    tok = imtok.tokenizers.create("gpstoken-m128")
    z, info = tok.encode(x)          # x [B, 3, 256, 256] in [0, 1] -> z [B, 128, 5 + 16]
    images = tok.decode(z)           # splat to 64 x 64, CNN decoder -> [B, 3, 256, 256] in [0, 1] (unclamped)
    z, info = tok.encode(x512)       # x512 [B, 3, 512, 512] -> 4 patches of 256, merged: z [B, 512, 5 + 16]
    images = tok.decode(z, scale=2)  # splat to 128 x 128, CNN decoder -> [B, 3, 512, 512]

Token layout (GPSToken's): z[b, n] = [sigma_x, sigma_y, rho, mu_x, mu_y, f_1 .. f_C] with sigma in (0, 1),
rho and mu in (-1, 1) (imtok_cuda.splat conventions, specs/splat.md).

Encoder (the official one, with the official module names where they cost nothing):
  * imtok_cuda.splat.entropy_partition of the image (in [-1, 1]) gives N regions and their initial Gaussians;
  * preprocess_img (conv 3x3 + 2 ResnetBlocks, pre_channels wide, full resolution), RoIAlign roi_size x roi_size
    per region (torchvision.ops.roi_align, aligned, adaptive sampling, on the region's pixel box), a 1x1 conv to
    the encoder width;
  * token i starts as gps_embed + MLP(initial geometry_i); each of enc_depth blocks adds a linear map of its
    region's roi_size^2 RoI features (roimlp) and then runs a pre-norm ViT block over the N tokens (fused
    attention);
  * to_gps[0] (zero-initialised, so training starts at the partition) predicts geometry deltas in logit space:
    sigma = sigmoid(logit(init) + delta), rho / mu = 2 sigmoid(logit((init + 1) / 2) + delta) - 1, clamped into
    the renderer's domain (imtok_cuda.nn.splat.geometry_from_logits); to_gps[1] the C texture channels.
Decoder: imtok_cuda.splat.render (box 3 sigma, no normalisation) to render_size^2 x C, then a CNN decoder
(z = C, ch 128, ch_mult [1, 2, 4], attention only in the middle block) to image_size.

Tokens are continuous by default; codebook_size adds a VQ (imtok.layers.quantize.VectorQuantize) on the texture
channels (geometry stays continuous), info["min_encoding_indices"] [B, N]. Tokens are unordered: no lengths.
Inside `imtok.use_reference()` the renderer is imtok_cuda.reference.splat's dense one (and attention / VQ their
references). The partition is a one-off per image (GPSToken computes it in its data loader): pass
encode(x, init_geometry=...) to reuse one.

Higher resolutions (the official inference_gsptoken.py + models/gpstoken.py adjust_gpstoken / DecoderNP): an image
of side n * image_size (n = 2 or 4; 512 / 1024 px for the published sizes) is cut into n x n patches of
image_size (row-major), each patch gets its own partition and is encoded on its own, and the n^2 N tokens are
merged into one set (`merge_patch_tokens`: patch p = (row i, column j) keeps its tokens in order, sigma / n,
rho unchanged, mu_x -> (mu_x + 1 + 2 j) / n - 1, mu_y -> (mu_y + 1 + 2 i) / n - 1). decode(z, scale=n) splats
the merged set to (n render_size)^2 and runs the same decoder weights the way DecoderNP does at n > 1: the
GroupNorms of the residual blocks take their mean and std per patch (1 / n of the map per side), bicubically
upsample the n x n grid of statistics to the whole map and normalise with (h - mean) / (std + eps); the middle
attention attends within each patch; the final norm_out and the convolutions run over the whole map. The
official inference script decodes GPSToken-L256 differently (each patch alone at 256 px, tiled):
decode(z, scale=n, per_patch=True).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

import imtok_cuda.splat as _splat
from imtok_cuda.nn.splat import geometry_from_logits, logits_from_geometry
from imtok_cuda.reference import splat as _reference_splat

from ..backbones.cnn import CNNDecoder, ResnetBlock
from ..backbones.vit import Block
from ..layers.quantize import VectorQuantize
from ..layers.switch import reference_enabled
from .base import Tokenizer, check_images

__all__ = ["GPSTokenConfig", "GPSToken", "partition_boxes", "merge_patch_tokens", "split_patch_tokens",
           "SCALES"]

# Image side / image_size that encode takes: the official code runs 256-px models on 512 and 1024 px.
SCALES = (1, 2, 4)


@dataclasses.dataclass
class GPSTokenConfig:
    image_size: int = 256
    num_tokens: int = 128
    texture_channels: int = 16
    enc_width: int = 512
    enc_depth: int = 30
    enc_heads: int = 8
    mlp_ratio: float = 4.0
    roi_size: int = 8
    pre_channels: int = 128
    render_size: int = 64
    box_sigma: float = 3.0
    dec_ch: int = 128
    dec_ch_mult: tuple = (1, 2, 4)
    dec_num_res_blocks: int = 2
    partition_minhw: int = 8
    partition_weight: float = 2.5
    codebook_size: int | None = None
    codebook_l2_norm: bool = False
    commitment_cost: float = 0.25

    def __post_init__(self):
        self.dec_ch_mult = tuple(self.dec_ch_mult)
        up = 2 ** (len(self.dec_ch_mult) - 1)
        if self.render_size * up != self.image_size:
            raise ValueError(f"render_size ({self.render_size}) x 2^(len(dec_ch_mult) - 1) ({up}) must equal "
                             f"image_size ({self.image_size})")
        if self.num_tokens < 1 or self.texture_channels < 1:
            raise ValueError(f"num_tokens and texture_channels must be >= 1, got {self.num_tokens}, "
                             f"{self.texture_channels}")


def partition_boxes(geometry: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel boxes [B, N, 4] = (x0, y0, x1, y1) (inclusive pixel indices) of partition Gaussians [B, N, 5].

    entropy_partition's region [w0..w1] has mu_x = (w0 + w1) / (W - 1) - 1 and sigma_x = (w1 - w0) / W * 2/3, so
    w0, w1 = centre -+ half with centre = (W - 1)(mu_x + 1) / 2, half = 3/4 sigma_x W; rounded to whole pixels
    (the regions are pixel-aligned, and RoIAlign's sample count jumps with the box size)."""
    g = geometry.detach().double()
    cx, cy = (width - 1) * (g[..., 3] + 1) / 2, (height - 1) * (g[..., 4] + 1) / 2
    hx, hy = 0.75 * g[..., 0] * width, 0.75 * g[..., 1] * height
    boxes = torch.stack([cx - hx, cy - hy, cx + hx, cy + hy], -1).round()
    return boxes.to(geometry.dtype)


def merge_patch_tokens(z: torch.Tensor, n: int) -> torch.Tensor:
    """Tokens of the n x n patches of B images [B n^2, N, 5 + C] (image-major, patches row-major) -> the tokens
    of the whole images [B, n^2 N, 5 + C]: patch p = (i, j) = divmod(p, n) keeps its N tokens in order at
    p N .. p N + N - 1, with sigma / n, rho unchanged, mu_x -> (mu_x + 1 + 2 j) / n - 1,
    mu_y -> (mu_y + 1 + 2 i) / n - 1 (the patch's [-1, 1] onto its 1 / n of the image's [-1, 1]). The official
    adjust_gpstoken numbers the patches of a batch as if it were patch-major (repeat_interleave), which only agrees
    with its own image-major layout at B = 1 (its inference script's batch); here every image gets its own
    patches' offsets."""
    Bp, N, D = z.shape
    if Bp % (n * n):
        raise ValueError(f"z.shape[0] must be a multiple of n^2 = {n * n}, got shape {tuple(z.shape)}")
    row, col = _patch_rows_cols(z, n)
    geometry = torch.stack([z[..., 0] / n, z[..., 1] / n, z[..., 2], (z[..., 3] + 1 + 2 * col) / n - 1,
                            (z[..., 4] + 1 + 2 * row) / n - 1], -1)
    return torch.cat([geometry, z[..., 5:]], -1).reshape(Bp // (n * n), n * n * N, D)


def split_patch_tokens(z: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of merge_patch_tokens: [B, n^2 N, 5 + C] -> [B n^2, N, 5 + C] in each patch's coordinates."""
    B, M, D = z.shape
    if M % (n * n):
        raise ValueError(f"z.shape[1] must be a multiple of n^2 = {n * n} (n^2 patches of N tokens), got shape "
                         f"{tuple(z.shape)}")
    z = z.reshape(B * n * n, M // (n * n), D)
    row, col = _patch_rows_cols(z, n)
    geometry = torch.stack([z[..., 0] * n, z[..., 1] * n, z[..., 2], (z[..., 3] + 1) * n - 1 - 2 * col,
                            (z[..., 4] + 1) * n - 1 - 2 * row], -1)
    return torch.cat([geometry, z[..., 5:]], -1)


def _patch_rows_cols(z: torch.Tensor, n: int):
    """Row and column [B n^2, 1] (z's dtype) of each patch of z [B n^2, N, D] (image-major, patches row-major)."""
    patch = torch.arange(n * n, device=z.device).repeat(z.shape[0] // (n * n))
    return (patch // n).to(z.dtype)[:, None], (patch % n).to(z.dtype)[:, None]


def _to_patches(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, C, n h, n w] -> [B n^2, C, h, w], image-major, patches row-major."""
    B, C, H, W = x.shape
    return x.reshape(B, C, n, H // n, n, W // n).permute(0, 2, 4, 1, 3, 5).reshape(B * n * n, C, H // n, W // n)


def _from_patches(x: torch.Tensor, n: int) -> torch.Tensor:
    Bp, C, h, w = x.shape
    return x.reshape(Bp // (n * n), n, n, C, h, w).permute(0, 3, 1, 4, 2, 5).reshape(Bp // (n * n), C, n * h, n * w)


def _patch_group_norm(norm: nn.GroupNorm, h: torch.Tensor, n: int) -> torch.Tensor:
    """DecoderNP's GroupNorm at n x n patches: mean and (biased) std per image, group and patch, the n x n grid of
    each bicubically resized to the map (align_corners False), (h - mean) / (std + eps), then the affine."""
    B, C, H, W = h.shape
    G = norm.num_groups
    var, mean = torch.var_mean(_to_patches(h, n).reshape(B * n * n, G, -1), dim=2, correction=0)

    def spread(stat):  # [B n^2, G] -> [B, G, 1, H, W]
        grid = stat.reshape(B, n, n, G).permute(0, 3, 1, 2)
        return F.interpolate(grid, size=(H, W), mode="bicubic", align_corners=False)[:, :, None]

    out = (h.reshape(B, G, C // G, H, W) - spread(mean)) / (spread(var.sqrt()) + norm.eps)
    return out.reshape(B, C, H, W) * norm.weight[:, None, None] + norm.bias[:, None, None]


def _patch_resnet_block(block: ResnetBlock, x: torch.Tensor, n: int) -> torch.Tensor:
    h = block.conv1(F.silu(_patch_group_norm(block.norm1, x, n)))
    h = block.conv2(block.dropout(F.silu(_patch_group_norm(block.norm2, h, n))))
    if block.in_channels != block.out_channels:
        x = block.nin_shortcut(x)
    return x + h


def _decode_patches(decoder: CNNDecoder, z: torch.Tensor, n: int) -> torch.Tensor:
    """CNNDecoder's forward as the official DecoderNP runs it on n x n patches (module docstring)."""
    h = decoder.conv_in(z)
    block_1, attn, block_2 = decoder.mid
    h = _patch_resnet_block(block_1, h, n)
    h = _from_patches(attn(_to_patches(h, n)), n)
    h = _patch_resnet_block(block_2, h, n)
    for i, level in enumerate(decoder.conv_blocks):
        for block in level.res:
            h = _patch_resnet_block(block, h, n)
        if i != decoder.num_resolutions - 1:
            h = level.upsample(h)
    return decoder.conv_out(F.silu(decoder.norm_out(h)))  # DecoderNP calls norm_out without _np: whole map


def _roi_align(features, boxes, size):
    try:
        from torchvision.ops import roi_align
    except ImportError as e:  # pragma: no cover - torchvision is installed where the tests run
        raise ImportError("GPSToken's encoder needs torchvision (torchvision.ops.roi_align): pip install "
                          "torchvision") from e
    B, N, _ = boxes.shape
    index = torch.arange(B, device=boxes.device, dtype=boxes.dtype).repeat_interleave(N)[:, None]
    rois = torch.cat([index, boxes.reshape(B * N, 4)], 1).to(features.dtype)
    return roi_align(features, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


class GPSBlock(Block):
    """The official AttnBlock: x + roimlp(RoI features of the token's region), then a pre-norm ViT block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, roi_positions: int):
        super().__init__(dim, num_heads, mlp_ratio)
        self.roimlp = nn.Linear(roi_positions, 1)

    def forward(self, x, roi_features):
        B, N, C = x.shape
        return super().forward(x + self.roimlp(roi_features).view(B, N, C))


class GPSToken(Tokenizer):
    family = "gpstoken"
    config_class = GPSTokenConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        W = c.enc_width
        self.preprocess_img = nn.Sequential(nn.Conv2d(3, c.pre_channels, 3, padding=1),
                                            ResnetBlock(c.pre_channels, c.pre_channels),
                                            ResnetBlock(c.pre_channels, c.pre_channels))
        self.roialign_layer = nn.Conv2d(c.pre_channels, W, 1)
        self.gps_embed = nn.Embedding(1, W)
        self.gps_embed_layer = nn.Sequential(nn.Linear(5, W), nn.GELU(), nn.Linear(W, W))
        self.attnblocks = nn.ModuleList([GPSBlock(W, c.enc_heads, c.mlp_ratio, c.roi_size ** 2)
                                         for _ in range(c.enc_depth)])
        self.to_gps = nn.ModuleList([nn.Linear(W, 5), nn.Linear(W, c.texture_channels)])
        nn.init.zeros_(self.to_gps[0].weight)
        nn.init.zeros_(self.to_gps[0].bias)
        self.decoder = CNNDecoder(c.texture_channels, c.dec_ch, c.dec_ch_mult, c.dec_num_res_blocks,
                                  level_attention=False)
        self.quantize = None
        if c.codebook_size is not None:
            self.quantize = VectorQuantize(c.codebook_size, c.texture_channels, c.commitment_cost,
                                           c.codebook_l2_norm)

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def token_dim(self) -> int:
        return 5 + self.config.texture_channels

    def initial_geometry(self, x: torch.Tensor) -> torch.Tensor:
        """The entropy-driven partition of images x [B, 3, H, W] in [0, 1] -> geometry [B, N, 5]."""
        c = self.config
        return _splat.entropy_partition(x * 2 - 1, c.num_tokens, c.partition_minhw, c.partition_weight)

    def scale_of(self, x: torch.Tensor) -> int:
        """Images x [B, 3, S, S] in [0, 1] with S = n image_size, n in SCALES -> n (ValueError otherwise)."""
        check_images(x, "x")
        s = self.config.image_size
        H, W = x.shape[-2:]
        if H != W or H % s or H // s not in SCALES:
            sizes = ", ".join(f"{n * s} x {n * s}" for n in SCALES[1:])
            raise ValueError(f"x must be {s} x {s} pixels (or {sizes}: encoded as {s}-px patches), got {H} x {W}")
        return H // s

    def encode(self, x: torch.Tensor, init_geometry: torch.Tensor | None = None):
        """x [B, 3, S, S] in [0, 1], S = n image_size (n in SCALES) -> (z [B, n^2 N, 5 + C], info): n > 1 encodes
        each image_size patch on its own and merges the tokens (`merge_patch_tokens`); decode them with
        decode(z, scale=n). init_geometry [B, n^2 N, 5]: a precomputed partition, the patches' own
        `initial_geometry` (patch coordinates) one after the other, patches row-major (default: computed here).
        info: init_geometry (that layout), and with a VQ min_encoding_indices [B, n^2 N] and the quantizer losses."""
        c = self.config
        n = self.scale_of(x)
        B, N = x.shape[0], c.num_tokens
        patches = _to_patches(x, n) if n > 1 else x
        if init_geometry is None:
            init_geometry = self.initial_geometry(patches).reshape(B, n * n * N, 5)
        elif not isinstance(init_geometry, torch.Tensor) or tuple(init_geometry.shape) != (B, n * n * N, 5):
            raise ValueError(f"init_geometry must have shape [B, n^2 N, 5] = {[B, n * n * N, 5]}, got "
                             f"{tuple(getattr(init_geometry, 'shape', ()))}")
        init_geometry = init_geometry.to(device=x.device, dtype=x.dtype)
        init = init_geometry.reshape(B * n * n, N, 5)
        features = self.preprocess_img(patches * 2 - 1)
        rois = _roi_align(features, partition_boxes(init, c.image_size, c.image_size), c.roi_size)
        rois = self.roialign_layer(rois).flatten(2)  # [B n^2 N, width, roi_size^2]
        h = self.gps_embed.weight + self.gps_embed_layer(init)
        for blk in self.attnblocks:
            h = blk(h, rois)
        geometry = geometry_from_logits(logits_from_geometry(init) + self.to_gps[0](h))
        z = merge_patch_tokens(torch.cat([geometry, self.to_gps[1](h)], -1), n)
        info = {"init_geometry": init_geometry}
        if self.quantize is None:
            return z, info
        texture, indices, q_info = self.quantize(z[..., 5:])
        info.update(q_info)
        info["min_encoding_indices"] = indices
        return torch.cat([z[..., :5], texture], -1), info

    def decode(self, z: torch.Tensor, lengths=None, scale: int = 1, per_patch: bool = False):
        """z [B, n, 5 + C] (any token count n; geometry in the renderer's domain) -> images [B, 3, S, S] with
        S = scale image_size: the splat at scale render_size, then the decoder (per-patch statistics at
        scale > 1, module docstring). per_patch=True (scale > 1, z as encode merged it: scale^2 N tokens, patch
        by patch) decodes every patch's tokens on their own at image_size and tiles the results, as the official
        inference script does for GPSToken-L256."""
        _no_lengths(lengths)
        if not isinstance(z, torch.Tensor) or z.dim() != 3 or z.shape[-1] != self.token_dim or not z.shape[1]:
            raise ValueError(f"z must have shape [B, n, 5 + C] = [B, n, {self.token_dim}] with n >= 1, got "
                             f"{tuple(getattr(z, 'shape', ()))}")
        scale = _check_scale(scale)
        if per_patch and scale > 1:
            return _from_patches(self.decode(split_patch_tokens(z, scale)), scale)
        rendered = self.render(z, scale)
        out = self.decoder(rendered) if scale == 1 else _decode_patches(self.decoder, rendered, scale)
        return (out + 1) / 2

    def render(self, z: torch.Tensor, scale: int = 1) -> torch.Tensor:
        """Splat tokens [B, n, 5 + C] to the decoder's input [B, C, scale render_size, scale render_size]."""
        c = self.config
        geometry, texture = z[..., :5], z[..., 5:]
        size = (scale * c.render_size, scale * c.render_size)
        if reference_enabled():
            return _reference_splat.render(geometry, texture, size, box_sigma=c.box_sigma)
        return _splat.render(geometry, texture, size, box_sigma=c.box_sigma)

    def decode_tokens(self, tokens: torch.Tensor, lengths=None, geometry: torch.Tensor | None = None,
                      scale: int = 1, per_patch: bool = False):
        """Continuous tokens [B, n, 5 + C] (= decode); with a VQ, code indices [B, n] and their geometry
        [B, n, 5]. scale, per_patch as in decode."""
        if self.quantize is None:
            if geometry is not None:
                raise ValueError("geometry is only taken with VQ tokens (codebook_size set); continuous tokens "
                                 "carry their geometry")
            return self.decode(tokens, lengths, scale, per_patch)
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            raise ValueError(f"tokens must be code indices [B, n], got shape {tuple(getattr(tokens, 'shape', ()))}")
        if not isinstance(geometry, torch.Tensor) or tuple(geometry.shape) != (*tokens.shape, 5):
            raise ValueError(f"geometry must have shape [B, n, 5] = {[*tokens.shape, 5]}, got "
                             f"{tuple(getattr(geometry, 'shape', ()))}")
        texture = self.quantize.lookup(tokens).to(geometry.dtype)
        return self.decode(torch.cat([geometry, texture], -1), lengths, scale, per_patch)

    def forward(self, x: torch.Tensor, lengths=None, init_geometry: torch.Tensor | None = None):
        _no_lengths(lengths)
        z, info = self.encode(x, init_geometry)
        return self.decode(z, scale=x.shape[-1] // self.config.image_size), info


def _check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES} (output side = scale x image_size), got {scale!r}")
    return scale


def _no_lengths(lengths):
    if lengths is not None:
        raise ValueError("lengths applies to ordered 1D tokens; GPSToken's Gaussian tokens are unordered "
                         "(decode any subset by passing those tokens)")
