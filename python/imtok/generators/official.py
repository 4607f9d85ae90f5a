"""load_official(family, state_dict, config): build our model from an anchor's checkpoint and configuration.

  "llamagen-gpt"   FoundationVision/LlamaGen autoregressive/models/gpt.py Transformer (c2i); config = the
                   fields of its ModelArgs as a dict (e.g. dataclasses.asdict(model.config)).
  "titok-maskgit"  bytedance/1d-tokenizer modeling/maskgit.py ImageBert (model_type "ViT") or UViTBert ("UViT");
                   config = the official YAML's content as a plain dict (${...} references are resolved).
"""
import re
from typing import Any, Dict

import torch

from .ar import LlamaGenGPT
from .maskgit import MaskGITGenerator

__all__ = ["load_official"]

# ModelArgs fields that change nothing in a class-conditional model's weights or outputs
_LLAMAGEN_IGNORED = {"caption_dim", "max_batch_size", "max_seq_len", "model_type"}


def _unwrap(state_dict):
    for key in ("model", "module", "state_dict"):  # LlamaGen's training checkpoints nest the weights
        if key in state_dict and isinstance(state_dict[key], dict):
            return state_dict[key]
    return state_dict


def _load_strict(model, state, family):
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{family}: checkpoint does not match the configuration; missing {sorted(missing)[:8]}, "
                         f"unexpected {sorted(unexpected)[:8]}")
    return model


def _llamagen(state_dict, config):
    cfg = dict(config)
    if cfg.get("model_type", "c2i") != "c2i":
        raise NotImplementedError(f"llamagen-gpt: only class-conditional (c2i) models, got {cfg['model_type']!r}")
    cfg = {k: v for k, v in cfg.items() if k not in _LLAMAGEN_IGNORED}
    model = LlamaGenGPT(**cfg)
    state = {}
    for k, v in _unwrap(state_dict).items():
        if ".kv_cache." in k or k in ("freqs_cis", "causal_mask"):
            continue  # decoding buffers of the official module, not weights
        k = k.replace(".attention.wqkv.", ".attention.qkv.").replace(".attention.wo.", ".attention.proj.")
        state[k] = v
    return _load_strict(model, state, "llamagen-gpt")


def _resolve(value, root):
    """Resolve OmegaConf-style ${a.b.c} references (the official YAMLs use them for image_seq_len)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\$\{([^}]+)\}", value.strip())
        if m:
            node = root
            for part in m.group(1).split("."):
                node = node[part]
            return _resolve(node, root)
    return value


def _titok_config(config: Dict[str, Any]):
    gen = config["model"]["generator"]
    get = lambda key, default=None: _resolve(gen.get(key, default), config)  # noqa: E731
    losses = config.get("losses", {}) or {}
    return dict(
        codebook_size=int(_resolve(config["model"]["vq_model"]["codebook_size"], config)),
        image_seq_len=int(get("image_seq_len")), condition_num_classes=int(get("condition_num_classes", 1000)),
        model_type=get("model_type", "ViT"), hidden_size=int(get("hidden_size")),
        num_hidden_layers=int(get("num_hidden_layers")), num_attention_heads=int(get("num_attention_heads")),
        intermediate_size=int(get("intermediate_size")), dropout=float(get("dropout", 0.1)),
        class_label_dropout=float(get("class_label_dropout", 0.1)),
        label_smoothing=float(losses.get("label_smoothing", 0.1)),
        loss_weight_unmasked_token=float(losses.get("loss_weight_unmasked_token", 0.1)))


_BERT_LAYER = {
    "attention.output.dense": "attn.proj", "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "fc1", "output.dense": "fc2", "output.LayerNorm": "mlp_norm",
}


def _titok_bert_state(sd, num_layers):
    out = {
        "embeddings.weight": sd["model.embeddings.word_embeddings.weight"],
        "pos_embed": sd["model.embeddings.position_embeddings.weight"][None],
        "token_type_embed": sd["model.embeddings.token_type_embeddings.weight"][0],
        "embed_norm.weight": sd["model.embeddings.LayerNorm.weight"],
        "embed_norm.bias": sd["model.embeddings.LayerNorm.bias"],
        "lm_head.weight": sd["model.lm_head.weight"], "lm_head.bias": sd["model.lm_head.bias"],
    }
    used = set(out) | {"model.embeddings.word_embeddings.weight", "model.embeddings.position_embeddings.weight",
                       "model.embeddings.token_type_embeddings.weight", "model.embeddings.LayerNorm.weight",
                       "model.embeddings.LayerNorm.bias", "model.lm_head.weight", "model.lm_head.bias",
                       "model.embeddings.position_ids", "model.embeddings.token_type_ids"}
    for i in range(num_layers):
        p = f"model.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            names = [f"{p}attention.self.{n}.{kind}" for n in ("query", "key", "value")]
            out[f"layers.{i}.attn.qkv.{kind}"] = torch.cat([sd[n] for n in names])
            used.update(names)
            for theirs, ours in _BERT_LAYER.items():
                out[f"layers.{i}.{ours}.{kind}"] = sd[f"{p}{theirs}.{kind}"]
                used.add(f"{p}{theirs}.{kind}")
    left = sorted(k for k in sd if k not in used)
    if left:
        raise ValueError(f"titok-maskgit: unexpected keys in the checkpoint: {left[:8]}")
    return out


def _titok(state_dict, config):
    cfg = _titok_config(config)
    model = MaskGITGenerator(**cfg)
    sd = _unwrap(state_dict)
    if cfg["model_type"] == "ViT":
        try:
            state = _titok_bert_state(sd, cfg["num_hidden_layers"])
        except KeyError as e:
            raise ValueError(f"titok-maskgit: checkpoint lacks {e} for a {cfg['num_hidden_layers']}-layer "
                             "ImageBert (model_type 'ViT')") from None
    else:
        state = dict(sd)  # UViTBert's names are ours
    return _load_strict(model, state, "titok-maskgit")


_FAMILIES = {"llamagen-gpt": _llamagen, "titok-maskgit": _titok}


def load_official(family: str, state_dict: Dict[str, torch.Tensor], config: Dict[str, Any]):
    """Our model with the weights of an official checkpoint; see the module docstring for the families."""
    if family not in _FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {sorted(_FAMILIES)}")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a plain dict, got {type(config).__name__}")
    return _FAMILIES[family](state_dict, config).eval()
