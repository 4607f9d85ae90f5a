"""ToMe (token merging, Bolya et al., ICLR 2023; facebookresearch/ToMe) on a timm VisionTransformer.

apply_tome(model, r) patches, in place, any timm ViT built from pre-norm Blocks (timm's VisionTransformer, DeiT
with a distillation token, models with register tokens or no class token; imtok.models.vit too):
  * attention (imtok.layers.self_attention: SDPA in the first block, then the fused op with key_bias = log(size),
    no attention map) adds log(size) per key (proportional attention) and hands back its keys; the merge metric
    is the keys averaged over heads;
  * after x + attn(norm1(x)) each block merges r tokens (bipartite soft matching, size-weighted average), then
    runs the MLP; sizes (and optionally sources) are carried from block to block.
As the official patch: `model.r` may be changed after apply_tome; r is an int, an (r, inflection) pair or a
per-block list (parse_r); each block clamps r to half of its unprotected tokens (T = 197 with a class token and
r = 200 gives 99). The class token and a distillation token are protected as upstream; register tokens (timm's
reg_tokens) are kept out of the matching altogether (upstream does not know them). After a forward,
model._tome_info["size"] ([B, T, 1]) and, with trace_source, ["source"] ([B, T, T0]) describe the merges.
Inside imtok.use_reference() the merges run imtok_cuda.reference.merge and attention the explicit reference.
"""
from typing import List, Tuple, Union

import torch
from torch import nn

from imtok.layers.attention import self_attention
from imtok_cuda import merge as _fused
from imtok_cuda.reference import merge as _reference

from ._patch import (check_no_mask, ops, patch_class, prefix_layout, residual_branch, unpatch, vit_blocks)

__all__ = ["apply_tome", "remove_tome", "parse_r"]

_TAG = "ToMe"


def parse_r(num_layers: int, r: Union[int, Tuple[int, float], List[int]]) -> List[int]:
    """ToMe's schedule: a constant r, (r, inflection) with inflection in [-1, 1], or an explicit list."""
    inflect = 0
    if isinstance(r, list):
        if len(r) < num_layers:
            r = r + [0] * (num_layers - len(r))
        return list(r)
    if isinstance(r, tuple):
        r, inflect = r
    min_val = int(r * (1.0 - inflect))
    max_val = 2 * r - min_val
    step = (max_val - min_val) / (num_layers - 1) if num_layers > 1 else 0
    return [int(min_val + step * i) for i in range(num_layers)]


def _merge_step(info, r, metric, x):
    """Merge r tokens of x (after attention) by the metric; updates info["size"] / ["source"]."""
    impl = ops(_fused, _reference)
    p = info["num_registers_skipped"]  # register tokens stay in front, outside the matching
    size, source = info["size"], info["source"]
    if info["trace_source"] and source is None:
        source = torch.eye(x.shape[1], device=x.device)[None].expand(x.shape[0], -1, -1)
    if p == 0:  # the layouts upstream knows: no split, no copies
        merge, _ = impl.bipartite_soft_matching(metric, r, info["class_token"], info["distill_token"])
        if source is not None:
            info["source"] = impl.merge_source(merge, x, source)
        x, info["size"] = impl.merge_wavg(merge, x, size)
        return x
    if size is None:
        size = torch.ones_like(x[..., :1])
    merge, _ = impl.bipartite_soft_matching(metric[:, p:], r, False, False)
    if source is not None:
        info["source"] = torch.cat([source[:, :p], impl.merge_source(merge, x[:, p:], source[:, p:])], 1)
    x_m, size_m = impl.merge_wavg(merge, x[:, p:], size[:, p:])
    info["size"] = torch.cat([size[:, :p], size_m], 1)
    return torch.cat([x[:, :p], x_m], 1)


def _tome_block_forward(self, x: torch.Tensor, attn_mask=None, is_causal=False) -> torch.Tensor:
    check_no_mask(attn_mask, is_causal)
    info = self._tome_info
    if self._tome_index == 0:  # a new forward pass (also through forward_features / forward_intermediates)
        info["size"], info["source"] = None, None
    size = info["size"] if info["prop_attn"] else None
    bias = None if size is None else size[..., 0].log()
    out, side = self_attention(self.attn, self.norm1(x), key_bias=bias, need=("k",))
    x = x + residual_branch(self, 1, out)
    r = info["r"][self._tome_index] if self._tome_index < len(info["r"]) else 0
    if r > 0:
        x = _merge_step(info, r, side["k"].mean(1), x)
    return x + residual_branch(self, 2, self.mlp(self.norm2(x)))


def _model_forward(self, *args, **kwargs):
    self._tome_info["r"] = parse_r(len(self.blocks), self.r)
    return self._imtok_original_class.forward(self, *args, **kwargs)


def apply_tome(model: nn.Module, r=0, trace_source: bool = False, prop_attn: bool = True) -> nn.Module:
    """Patch a timm ViT (in place) for ToMe with `r` tokens merged per block; returns the model.
    Same behaviour as ToMe's tome.patch.timm(model, trace_source, prop_attn) followed by model.r = r."""
    blocks = vit_blocks(model)
    class_token, distill_token, num_prefix = prefix_layout(model)
    registers = num_prefix - int(class_token) - int(distill_token)
    if registers:  # protected by keeping them out: the class / distillation tokens go with them
        class_token = distill_token = False
    patch_class(model, _TAG, {"forward": _model_forward})
    model.r = r
    model._tome_info = {"r": parse_r(len(blocks), r), "size": None, "source": None, "trace_source": trace_source,
                        "prop_attn": prop_attn, "class_token": class_token, "distill_token": distill_token,
                        "num_registers_skipped": num_prefix if registers else 0}
    for i, block in enumerate(blocks):
        patch_class(block, _TAG, {"forward": _tome_block_forward})
        block._tome_info = model._tome_info
        block._tome_index = i
    return model


def remove_tome(model: nn.Module) -> nn.Module:
    """Undo apply_tome: the original classes, no added attributes."""
    for block in getattr(model, "blocks", []):
        unpatch(block, _TAG, ("_tome_info", "_tome_index"))
    unpatch(model, _TAG, ("_tome_info", "r"))
    return model
