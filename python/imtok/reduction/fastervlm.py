"""FasterVLM ([CLS] attention for training-free visual token pruning, Zhang et al. 2024) on a Hugging Face CLIP
vision tower, as LLaVA uses it.

fastervlm(vision_model, pixel_values, keep=0.25, select_layer=-2)
runs the tower up to the layer LLaVA takes its features from (hidden_states[select_layer]; the layers after it
are skipped), takes that layer's class-token attention row averaged over heads as the score of every patch, and
keeps the top patches in spatial order. The row comes from the fused attention op as a side output: no layer
computes or stores an attention map, where the anchor turns on output_attentions (eager attention in every layer
and all maps returned: about 256 MB per image in fp16 for CLIP-L/336).
keep: a fraction of the patches (FasterVLM's 25 / 10 / 5 % keep 144 / 58 / 29 of 576), a count, or one count per
sample (a list or tensor): then the kept features come packed, one sample after another, with cu_seqlens.
Inside imtok.use_reference() attention and selection run their references.
"""
from typing import NamedTuple, Optional

import torch
from torch import nn

from imtok.layers.attention import self_attention
from imtok_cuda import prune as _fused
from imtok_cuda.reference import prune as _reference

from ._patch import ops

__all__ = ["fastervlm", "FasterVLMOutput"]


class FasterVLMOutput(NamedTuple):
    features: torch.Tensor      # [B, k, C], or packed [total, C] with per-sample counts
    positions: torch.Tensor     # patch index (0 .. N-2, row-major over the grid) of every kept feature, same layout
    cu_seqlens: Optional[torch.Tensor]  # int32 [B + 1] when packed, else None
    scores: torch.Tensor        # [B, N-1] class-token attention of the selection layer, mean over heads (fp32)


def _tower(vision_model: nn.Module) -> nn.Module:
    tower = getattr(vision_model, "vision_model", vision_model)  # transformers 4.x nests CLIPVisionTransformer
    if not all(hasattr(tower, n) for n in ("embeddings", "pre_layrnorm", "encoder")):
        raise ValueError(f"{type(vision_model).__name__} is not a transformers CLIP vision model "
                         "(embeddings, pre_layrnorm, encoder.layers)")
    return tower


def _encoder_layer(layer: nn.Module, x: torch.Tensor, need=()):
    """CLIPEncoderLayer.forward (pre-norm, residuals) with the attention through imtok.layers.self_attention."""
    res = self_attention(layer.self_attn, layer.layer_norm1(x), need=need)
    out, side = res if need else (res, None)
    x = x + out
    return x + layer.mlp(layer.layer_norm2(x)), side


def _keep_counts(keep, num_patches: int, batch: int):
    """(counts as a list of ints, per_sample)."""
    if isinstance(keep, float):
        if not 0 < keep <= 1:
            raise ValueError(f"a keep fraction must be in (0, 1], got {keep}")
        return [int(round(keep * num_patches))] * batch, False
    if isinstance(keep, int):
        counts, per_sample = [keep] * batch, False
    else:
        counts, per_sample = [int(k) for k in keep], True
        if len(counts) != batch:
            raise ValueError(f"keep has {len(counts)} counts for a batch of {batch}")
    if any(not 0 <= k <= num_patches for k in counts):
        raise ValueError(f"keep counts must be in [0, {num_patches}], got {counts}")
    return counts, per_sample


def fastervlm(vision_model: nn.Module, pixel_values: torch.Tensor, keep=0.25, select_layer: int = -2,
              interpolate_pos_encoding: bool = False) -> FasterVLMOutput:
    """Kept patch features of LLaVA's feature layer and their positions (see the module docstring)."""
    tower = _tower(vision_model)
    layers = tower.encoder.layers
    depth = len(layers)
    if not -depth <= select_layer < 0:
        raise ValueError(f"select_layer must be in [-{depth}, -1] (hidden_states index), got {select_layer}")
    x = tower.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
    x = tower.pre_layrnorm(x)
    last = depth + select_layer  # the layer whose output is hidden_states[select_layer]
    for layer in layers[:last]:
        x, _ = _encoder_layer(layer, x)
    x, side = _encoder_layer(layers[last], x, need=("cls_attn",))
    scores = side["cls_attn"][:, 1:]
    features = x[:, 1:]
    B, M, C = features.shape
    counts, per_sample = _keep_counts(keep, M, B)
    impl = ops(_fused, _reference)
    mask = torch.zeros(B, M, dtype=torch.bool, device=features.device)
    for k in sorted(set(counts)):
        rows = torch.tensor([c == k for c in counts], device=features.device)
        mask[rows] = impl.topk_mask(scores[rows], k)
    packed, cu_seqlens = impl.gather_packed(features, mask)
    positions = mask.nonzero()[:, 1]  # row-major: each sample's kept patches in spatial order, as packed
    if per_sample:
        return FasterVLMOutput(packed, positions, cu_seqlens, scores)
    k = counts[0] if counts else 0
    return FasterVLMOutput(packed.view(B, k, C), positions.view(B, k), None, scores)
