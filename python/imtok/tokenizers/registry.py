"""Named configurations: the published sizes of each family and a `-tiny` size that trains on CPU.

    tok = imtok.tokenizers.create("titok-s-128")                 # random weights, published architecture
    tok = imtok.tokenizers.create("one-d-piece-tiny", codebook_size=512)   # overrides replace config fields
    imtok.tokenizers.available()                                 # {name: description}

Published TiTok / One-D-Piece sizes use the single-stage pixel head here (the two-stage recipe needs the
MaskGIT-VQGAN weights); create(..., head="legacy", legacy_reshape=True, pixel_decoder={}) builds the layout of
the released two-stage checkpoints, which load_official builds by itself.
"""
from __future__ import annotations

from .titok import MODEL_SIZES

__all__ = ["create", "available", "REGISTRY"]


def _titok(enc: str, dec: str, tokens: int, **extra) -> dict:
    (ew, ed, eh), (dw, dd, dh) = MODEL_SIZES[enc], MODEL_SIZES[dec]
    return {"image_size": 256, "patch_size": 16, "enc_width": ew, "enc_depth": ed, "enc_heads": eh,
            "dec_width": dw, "dec_depth": dd, "dec_heads": dh, "num_latent_tokens": tokens, **extra}


# The tiny configs add LlamaGen's entropy loss (0.1). Measured on 32 px photo crops, B=16, AdamW 1e-3: without it
# titok-tiny's tokens stayed image-independent for 100 steps (one code per position, the decoder learning the mean
# image) and vqgan-tiny's codebook use fell to a perplexity of 3; with it the tokens differed between images
# within 50 steps and vqgan-tiny kept a perplexity of ~750. init_std None draws weights with std 1/sqrt(fan_in):
# TiTok's 0.02 (meant for widths >= 512) leaves the attention path ~1e-4 of the residual stream at these widths,
# so the encoder's output hardly depends on the image and gets ~1e-5 of the decoder's gradient
# (tests/test_tokenizer_learning.py).
_TINY_VIT = {"image_size": 32, "patch_size": 4, "enc_width": 128, "enc_depth": 4, "enc_heads": 4,
             "dec_width": 128, "dec_depth": 4, "dec_heads": 4, "codebook_size": 1024, "token_size": 12,
             "entropy_loss_ratio": 0.1, "init_std": None}

# name -> (family, config fields, description)
REGISTRY: dict[str, tuple[str, dict, str]] = {
    "llamagen-vq16": ("vqgan", {}, "LlamaGen VQ-16: CNN ch 128 mult [1,1,2,2,4], 16384 x 8 l2-norm, 16x16 tokens @256"),
    "llamagen-vq8": ("vqgan", {"encoder_ch_mult": (1, 2, 2, 4), "decoder_ch_mult": (1, 2, 2, 4)},
                     "LlamaGen VQ-8: CNN ch 128 mult [1,2,2,4], 16384 x 8 l2-norm, 32x32 tokens @256"),
    "vqgan-tiny": ("vqgan", {"ch": 32, "encoder_ch_mult": (1, 2, 2), "decoder_ch_mult": (1, 2, 2),
                             "num_res_blocks": 1, "z_channels": 64, "codebook_size": 1024,
                             "entropy_loss_ratio": 0.1},
                   "CPU size: ch 32 mult [1,2,2] (f4), 1024 x 8 l2-norm, entropy loss 0.1; 8x8 tokens on 32 px"),
    "titok-tiny": ("titok", {**_TINY_VIT, "num_latent_tokens": 32},
                   "CPU size: 32 px, patch 4, width 128, 4+4 layers, 32 tokens, 1024 x 12 l2-norm, entropy loss 0.1"),
    "one-d-piece-tiny": ("one-d-piece", {**_TINY_VIT, "num_latent_tokens": 64, "tail_drop": "batch"},
                         "CPU size: as titok-tiny with 64 tokens and tail token drop"),
}
for _size, _letter in (("small", "s"), ("base", "b"), ("large", "l")):
    for _n in (32, 64, 128):
        REGISTRY[f"titok-{_letter}-{_n}"] = (
            "titok", _titok(_size, _size, _n),
            f"TiTok-{_letter.upper()}-{_n}: ViT-{_size} encoder/decoder, {_n} tokens, 4096 x 12 l2-norm, pixel head")
    REGISTRY[f"one-d-piece-{_letter}-256"] = (
        "one-d-piece", _titok(_size, _size, 256, tail_drop="batch"),
        f"One-D-Piece-{_letter.upper()}-256: ViT-{_size}, 256 tokens, 4096 x 12 l2-norm, tail token drop")
for _name, _enc, _n in (("titok-bl-64-vq8k", "base", 64), ("titok-bl-128-vq8k", "base", 128),
                        ("titok-sl-256-vq8k", "small", 256)):
    REGISTRY[_name] = ("titok", _titok(_enc, "large", _n, codebook_size=8192, token_size=64, use_l2_norm=False),
                       f"TiTok single-stage: ViT-{_enc} encoder, ViT-large decoder, {_n} tokens, 8192 x 64")

# FlexTok (apple/ml-flextok): d<enc>-d<dec> with head dim 64 and width 64 x depth, 256 registers, FSQ 64000, on
# pixels with patch 16 (the anchor: 2 x 2 patches of f8 VAE latents, the same 256 patches at 256 px).
# flextok-tiny: 32 px, patch 4, width 128, 2 + 2 blocks, 32 registers, the direct pixel decoder.
_FLEXTOK_TINY = {"image_size": 32, "patch_size": 4, "num_registers": 32, "enc_width": 128, "enc_depth": 2,
                 "dec_width": 128, "dec_depth": 2, "head_dim": 32, "decoder": "pixel"}
REGISTRY["flextok-tiny"] = ("flextok", _FLEXTOK_TINY,
                            "CPU size: 32 px, patch 4, width 128, 2+2 blocks, 32 registers, FSQ 64000, pixel decoder")
REGISTRY["flextok-tiny-flow"] = ("flextok", {**_FLEXTOK_TINY, "decoder": "flow"},
                                 "CPU size: as flextok-tiny with the rectified-flow decoder")
for _enc, _dec in ((12, 12), (18, 18), (18, 28)):
    REGISTRY[f"flextok-d{_enc}-d{_dec}"] = (
        "flextok", {"enc_width": 64 * _enc, "enc_depth": _enc, "dec_width": 64 * _dec, "dec_depth": _dec},
        f"FlexTok d{_enc}-d{_dec}: widths {64 * _enc}/{64 * _dec}, 256 registers, FSQ 64000, rectified-flow decoder "
        "on pixels")

# GPSToken (configs/gpstoken_{s64,m128,l256}.yaml): encoder 30 blocks x 512, RoIAlign 8 x 8, render 64 x 64, CNN decoder
# ch 128 mult [1, 2, 4] -> 256 px. The tiny size trains on CPU: 32 px, 16 tokens, render 16 x 16, decoder mult [1, 2].
for _size, _n, _c in (("s", 64, 16), ("m", 128, 16), ("l", 256, 32)):
    REGISTRY[f"gpstoken-{_size}{_n}"] = (
        "gpstoken", {"num_tokens": _n, "texture_channels": _c},
        f"GPSToken {_n} Gaussian tokens x (5 + {_c}), encoder 30 x 512, splat 64 x 64, CNN decoder -> 256 px")
REGISTRY["gpstoken-tiny"] = (
    "gpstoken", {"image_size": 32, "num_tokens": 16, "texture_channels": 8, "enc_width": 64, "enc_depth": 2,
                 "enc_heads": 4, "roi_size": 4, "pre_channels": 32, "render_size": 16, "dec_ch": 32,
                 "dec_ch_mult": (1, 2), "dec_num_res_blocks": 1, "partition_minhw": 4},
    "CPU size: 32 px, 16 Gaussian tokens x (5 + 8), encoder 2 x 64, splat 16 x 16, CNN decoder ch 32 mult [1, 2]")

# Binary tokens (Instella-T2I): 128 tokens x 64 bits; TiTok's ViT-B layout at 256 px (the encoder / decoder sizes are ours).
REGISTRY["binary-b-128"] = ("binary", _titok("base", "base", 128, token_size=64),
                            "Binary 1D tokenizer: ViT-base encoder/decoder, 128 tokens x 64 bits, 256 px")
REGISTRY["binary-tiny"] = ("binary", {**{k: v for k, v in _TINY_VIT.items() if k not in ("codebook_size",
                                                                                         "entropy_loss_ratio")},
                                      "num_latent_tokens": 32, "token_size": 16},
                           "CPU size: 32 px, patch 4, width 128, 4+4 layers, 32 tokens x 16 bits")


def available() -> dict[str, str]:
    return {name: desc for name, (_, _, desc) in REGISTRY.items()}


def create(name: str, **overrides):
    """A tokenizer with random weights: the named config with `overrides` replacing its fields."""
    from .base import FAMILIES

    if name not in REGISTRY:
        raise ValueError(f"unknown tokenizer {name!r}; available: {sorted(REGISTRY)}")
    family, fields, _ = REGISTRY[name]
    cls = FAMILIES[family]
    config = cls.config_class(**{**fields, **overrides})
    return cls(config)
