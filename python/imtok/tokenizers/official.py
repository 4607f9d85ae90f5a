"""Official checkpoints -> imtok tokenizers with the same tokens and reconstructions.

    tok = load_official("llamagen-vq", torch.load("vq_ds16_c2i.pt")["model"], {"codebook_size": 16384, ...})
    tok = load_official("titok", torch.load("tokenizer_titok_s128.bin"), yaml.safe_load(open("titok_s128.yaml")))
    tok = load_official("one-d-piece", state_dict, yaml.safe_load(open("one-d-piece_s256.yaml")))

family "llamagen-vq": FoundationVision/LlamaGen tokenizer/tokenizer_image/vq_model.py; config = its ModelArgs
    fields as a dict (missing fields take ModelArgs' defaults). ch and num_res_blocks, which ModelArgs does not
    hold, are read from the state dict. norm_type "batch" is not supported.
family "titok": bytedance/1d-tokenizer modeling/titok.py; config = the official YAML as a plain dict. As the
    official code: is_legacy (default True) selects the legacy encoder reshape and the MaskGIT-code head,
    finetune_decoder (default True) adds the MaskGIT-VQGAN pixel decoder; quantize_mode "vae" is not supported.
family "one-d-piece": turingmotors/One-D-Piece modeling/one_d_piece.py (always the legacy layout).
family "gpstoken": xtudbxk/GPSToken models/gpstoken.py; config = configs/gpstoken_*.yaml as a dict (its "model"
    part, {"gpsconfig": ..., "decoderconfig": ...}, or the whole file). The preprocessing width (128 in the
    official code) is read from the state dict, the partition's min side (the dataset's adaptive_minhw, 8) from
    config["data"]["params"]["adaptive_minhw"] when present; the unused temb_proj layers of the preprocessing
    ResnetBlocks are dropped. Limits: square renders only, no attn_resolutions in the decoder (all released
    configs), 256 px crops (the official 512 / 1024 px patch merging (_np) is not provided). The official
    decoder's GroupNorm divides by std + eps instead of sqrt(var + eps) (<= 1e-6 relative difference).
Widths, depths and the MaskGIT decoder's shape are read from the state dict; the head count comes from the
official size table (small 8, base 12, large 16) and, for a width outside that table, from the extra keys
vit_enc_num_heads / vit_dec_num_heads in config["model"]["vq_model"]. Returned in eval mode.
"""
from __future__ import annotations

import re

from .gpstoken import GPSToken, GPSTokenConfig
from .titok import MODEL_SIZES, OneDPiece, TiTok, TiTokConfig
from .vqgan import VQGAN, VQGANConfig

__all__ = ["load_official", "convert_titok_state_dict", "convert_gpstoken_state_dict"]

_LLAMAGEN_ARGS = {"codebook_size": 16384, "codebook_embed_dim": 8, "codebook_l2_norm": True,
                  "codebook_show_usage": True, "commit_loss_beta": 0.25, "entropy_loss_ratio": 0.0,
                  "encoder_ch_mult": [1, 1, 2, 2, 4], "decoder_ch_mult": [1, 1, 2, 2, 4], "z_channels": 256,
                  "dropout_p": 0.0}


def load_official(family: str, state_dict: dict, config: dict):
    """Build the imtok tokenizer of an official checkpoint (see the module docstring for family / config)."""
    if family == "llamagen-vq":
        return _load_llamagen(state_dict, config)
    if family in ("titok", "one-d-piece"):
        return _load_titok(family, state_dict, config)
    if family == "gpstoken":
        return _load_gpstoken(state_dict, config)
    raise ValueError(f"family must be 'llamagen-vq', 'titok', 'one-d-piece' or 'gpstoken', got {family!r}")


def _count(state_dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state_dict for m in [rx.match(k)] if m})


def _load_llamagen(state_dict, config):
    unknown = set(config) - set(_LLAMAGEN_ARGS)
    if unknown:
        raise ValueError(f"config has fields that LlamaGen's ModelArgs does not have: {sorted(unknown)}")
    args = {**_LLAMAGEN_ARGS, **config}
    if "encoder.conv_in.weight" not in state_dict:
        raise ValueError("state_dict is not a LlamaGen VQModel state dict (no encoder.conv_in.weight); "
                     "LlamaGen checkpoints keep it under the 'model' key")
    cfg = VQGANConfig(codebook_size=args["codebook_size"], codebook_embed_dim=args["codebook_embed_dim"],
                      codebook_l2_norm=args["codebook_l2_norm"], commit_loss_beta=args["commit_loss_beta"],
                      entropy_loss_ratio=args["entropy_loss_ratio"], encoder_ch_mult=args["encoder_ch_mult"],
                      decoder_ch_mult=args["decoder_ch_mult"], z_channels=args["z_channels"],
                      dropout_p=args["dropout_p"], ch=state_dict["encoder.conv_in.weight"].shape[0],
                      num_res_blocks=_count(state_dict, r"encoder\.conv_blocks\.0\.res\.(\d+)\."))
    sd = {k: v for k, v in state_dict.items() if k != "quantize.codebook_used"}
    model = VQGAN(cfg)
    model.load_state_dict(_with_buffers(model, sd), strict=True)
    return model.eval()


def _with_buffers(model, sd):
    """Our own buffers (the quantizer's step counter) are not in official checkpoints."""
    own = dict(model.named_buffers())
    return {**{k: v for k, v in own.items() if k.endswith("quantize.step")}, **sd}


_BLOCK_RENAMES = (("ln_1.", "norm1."), ("ln_2.", "norm2."), ("attn.in_proj_weight", "attn.qkv.weight"),
                  ("attn.in_proj_bias", "attn.qkv.bias"), ("attn.out_proj.", "attn.proj."),
                  ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))


def convert_titok_state_dict(state_dict: dict, legacy_head: bool) -> dict:
    """Official TiTok / One-D-Piece names -> imtok names (1x1 convs become linear layers)."""
    out = {}
    for k, v in state_dict.items():
        m = re.match(r"(encoder|decoder)\.transformer\.(\d+)\.(.*)", k)
        if m:
            rest = m.group(3)
            for old, new in _BLOCK_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            k = f"{m.group(1)}.transformer.blocks.{m.group(2)}.{rest}"
        elif k.startswith("encoder.conv_out."):
            k, v = "encoder.proj_out." + k[len("encoder.conv_out."):], _squeeze_1x1(v)
        elif k.startswith("decoder.ffn."):
            idx, rest = k[len("decoder.ffn."):].split(".", 1)
            k = (f"decoder.code_head.{idx}.{rest}" if legacy_head else f"decoder.to_pixels.{rest}")
            v = _squeeze_1x1(v)
        elif k == "quantize.embed_prob":  # clustering-VQ statistics, training only
            continue
        out[k] = v
    return out


def _squeeze_1x1(w):
    return w.reshape(w.shape[0], w.shape[1]) if w.dim() == 4 else w


def _heads(vq: dict, which: str, width: int) -> int:
    key = f"vit_{which}_num_heads"
    if key in vq:
        return int(vq[key])
    size = vq.get(f"vit_{which}_model_size")
    if size in MODEL_SIZES and MODEL_SIZES[size][0] == width:
        return MODEL_SIZES[size][2]
    raise ValueError(f"width {width} of the {which}oder is not the official {size!r} width; give {key} in "
                     "config['model']['vq_model']")


def _pixel_decoder_shape(sd: dict) -> dict:
    levels = _count(sd, r"pixel_decoder\.up\.(\d+)\.")
    widths = [sd[f"pixel_decoder.up.{i}.block.0.conv2.weight"].shape[0] for i in range(levels)]
    hidden = widths[0]
    return {"hidden_channels": hidden, "channel_mult": [w // hidden for w in widths],
            "num_res_blocks": _count(sd, r"pixel_decoder\.up\.0\.block\.(\d+)\."),
            "z_channels": sd["pixel_decoder.conv_in.weight"].shape[1],
            "num_codes": sd["pixel_quantize.embedding.weight"].shape[0]}


def _load_titok(family, state_dict, config):
    try:
        vq = config["model"]["vq_model"]
        crop = config["dataset"]["preprocessing"]["crop_size"]
    except (KeyError, TypeError):
        raise ValueError("config must be the official YAML as a dict: model.vq_model.* and "
                         "dataset.preprocessing.crop_size") from None
    if vq.get("quantize_mode", "vq") != "vq":
        raise ValueError(f"quantize_mode {vq.get('quantize_mode')!r} is not supported (VQ tokenizers only)")
    legacy = True if family == "one-d-piece" else bool(vq.get("is_legacy", True))
    finetune_decoder = bool(vq.get("finetune_decoder", True))
    sd = dict(state_dict)
    enc_w = sd["encoder.positional_embedding"].shape[1]
    dec_w = sd["decoder.positional_embedding"].shape[1]
    cfg = TiTokConfig(
        image_size=crop, patch_size=vq["vit_enc_patch_size"], dec_patch_size=vq["vit_dec_patch_size"],
        enc_width=enc_w, enc_depth=_count(sd, r"encoder\.transformer\.(\d+)\."), enc_heads=_heads(vq, "enc", enc_w),
        dec_width=dec_w, dec_depth=_count(sd, r"decoder\.transformer\.(\d+)\."), dec_heads=_heads(vq, "dec", dec_w),
        num_latent_tokens=vq["num_latent_tokens"], token_size=vq["token_size"], codebook_size=vq["codebook_size"],
        use_l2_norm=bool(vq.get("use_l2_norm", False)), commitment_cost=vq.get("commitment_cost", 0.25),
        head="legacy" if legacy else "pixel", legacy_reshape=legacy,
        num_legacy_codes=sd["decoder.ffn.2.weight"].shape[0] if legacy else 1024,
        pixel_decoder=_pixel_decoder_shape(sd) if legacy and finetune_decoder else None,
        tail_drop="batch" if family == "one-d-piece" else None)
    model = (OneDPiece if family == "one-d-piece" else TiTok)(cfg)
    model.load_state_dict(_with_buffers(model, convert_titok_state_dict(sd, legacy)), strict=True)
    return model.eval()


_GPS_BLOCK_RENAMES = (("ln1.", "norm1."), ("ln2.", "norm2."), ("attn1.in_proj_weight", "attn.qkv.weight"),
                      ("attn1.in_proj_bias", "attn.qkv.bias"), ("attn1.out_proj.", "attn.proj."),
                      ("mlp.0.", "mlp.fc1."), ("mlp.2.", "mlp.fc2."))
_GPS_MID = {"block_1": 0, "attn_1": 1, "block_2": 2}


def convert_gpstoken_state_dict(state_dict: dict, num_levels: int) -> dict:
    """Official GPSToken names -> imtok names (encoder blocks with timm names, taming's decoder layout with
    LlamaGen's: mid.block_1 / attn_1 / block_2 -> mid.0 / 1 / 2, up[i] -> conv_blocks[num_levels - 1 - i])."""
    out = {}
    for k, v in state_dict.items():
        if ".temb_proj." in k:  # preprocessing ResnetBlocks are built with temb layers they never use
            continue
        m = re.match(r"attnblocks\.(\d+)\.(.*)", k)
        if m:
            rest = m.group(2)
            for old, new in _GPS_BLOCK_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            k = f"attnblocks.{m.group(1)}.{rest}"
        elif k.startswith("decoder.mid."):
            idx, rest = k[len("decoder.mid."):].split(".", 1)
            k = f"decoder.mid.{_GPS_MID[idx]}.{rest}"
        elif k.startswith("decoder.up."):
            m = re.match(r"decoder\.up\.(\d+)\.(block|upsample)\.(.*)", k)
            level = num_levels - 1 - int(m.group(1))
            k = f"decoder.conv_blocks.{level}.{'res' if m.group(2) == 'block' else 'upsample'}.{m.group(3)}"
        out[k] = v
    return out


def _load_gpstoken(state_dict, config):
    model_cfg = config.get("model", config) if isinstance(config, dict) else None
    try:
        gps, dec = model_cfg["gpsconfig"], model_cfg["decoderconfig"]
    except (KeyError, TypeError):
        raise ValueError("config must be the official YAML (or its 'model' part) as a dict: gpsconfig.* and "
                         "decoderconfig.*") from None
    if "preprocess_img.0.weight" not in state_dict:
        raise ValueError("state_dict is not a GPSToken state dict (no preprocess_img.0.weight)")
    if dec.get("attn_resolutions"):
        raise ValueError(f"decoder attn_resolutions {dec['attn_resolutions']} are not supported (released "
                         "configs have none)")
    if dec.get("double_z", False):
        raise ValueError("decoderconfig double_z is not supported")
    rs = list(gps["gps_rs"])
    if rs[0] != rs[1]:
        raise ValueError(f"gps_rs must be square, got {rs}")
    if dec["z_channels"] != gps["gps_c"]:
        raise ValueError(f"decoderconfig z_channels ({dec['z_channels']}) must equal gpsconfig gps_c ({gps['gps_c']})")
    data = config.get("data", {}).get("params", {}) if isinstance(config.get("data"), dict) else {}
    cfg = GPSTokenConfig(
        image_size=dec["resolution"], num_tokens=gps["gps_num"], texture_channels=gps["gps_c"],
        enc_width=gps["gpsenc_c"], enc_depth=gps["gpsenc_n"], enc_heads=8, roi_size=gps["rois"],
        pre_channels=state_dict["preprocess_img.0.weight"].shape[0], render_size=rs[0], box_sigma=gps["gps_dmax"],
        dec_ch=dec["ch"], dec_ch_mult=tuple(dec["ch_mult"]), dec_num_res_blocks=dec["num_res_blocks"],
        partition_minhw=data.get("adaptive_minhw", 8), partition_weight=gps.get("gps_adaptive_w", 2.5))
    model = GPSToken(cfg)
    model.load_state_dict(convert_gpstoken_state_dict(state_dict, len(cfg.dec_ch_mult)), strict=True)
    return model.eval()
