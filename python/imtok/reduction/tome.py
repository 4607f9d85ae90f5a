"""ToMe (token merging, facebookresearch/ToMe) applied to a plain ViT.

apply_tome(model, r) patches, in place, a ViT whose blocks have timm's layout (norm1, attn with qkv / proj /
num_heads / scale, norm2, mlp; e.g. imtok.models.vit.VisionTransformer or a timm VisionTransformer):
  * attention returns its keys averaged over heads as the merge metric, and adds log(size) to the logits of
    every key (proportional attention; none in the first block, where sizes are all one);
  * after x + attn(norm1(x)) each block merges r tokens (bipartite soft matching, size-weighted average),
    then runs the MLP; sizes (and optionally sources) are carried from block to block.
`r` is an int, an (r, inflection) pair or a per-block list, as in ToMe's parse_r; each block clamps its r to half
of its unprotected tokens (T = 197 with a CLS token and r = 200 gives 99 tokens).
`fused=True` uses imtok_cuda's fused kernels; `fused=False` the pure-PyTorch reference (upstream semantics).
"""
from typing import List, Tuple, Union

import torch
from torch import nn

from imtok_cuda import merge as _fused
from imtok_cuda.attention import attention as _fused_attention
from imtok_cuda.reference import merge as _reference

__all__ = ["apply_tome", "remove_tome", "parse_r", "tome_attention"]


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


def tome_attention(attn: nn.Module, x: torch.Tensor, size=None, fused: bool = False):
    """timm-style attention with proportional attention: returns (out, metric = keys averaged over heads).
    fused=True runs imtok_cuda.attention with key_bias = log(size) (no attention map is stored); the explicit
    softmax path stays for fused=False and whenever attention dropout is active."""
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    drop = attn.attn_drop
    if fused and not (drop.training and getattr(drop, "p", 0.0) > 0):
        bias = size.log()[..., 0] if size is not None else None
        out = _fused_attention(q, k, v, key_bias=bias, scale=attn.scale)
    else:
        logits = (q @ k.transpose(-2, -1)) * attn.scale
        if size is not None:
            logits = logits + size.log()[:, None, None, :, 0]
        out = drop(logits.softmax(dim=-1)) @ v
    out = out.transpose(1, 2).reshape(B, N, C)
    out = attn.proj_drop(attn.proj(out))
    return out, k.mean(1)


def _branch(block, i):
    """drop_path / layer-scale wrappers of a block's two residual branches (timm old and new names)."""
    dp = getattr(block, "drop_path%d" % i, None) or getattr(block, "drop_path", None) or nn.Identity()
    ls = getattr(block, "ls%d" % i, None) or nn.Identity()
    return lambda t: dp(ls(t))


def _tome_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    info = self._tome_info
    impl = _fused if info["fused"] else _reference
    attn_size = info["size"] if info["prop_attn"] else None
    x_attn, metric = tome_attention(self.attn, self.norm1(x), attn_size, fused=info["fused"])
    x = x + _branch(self, 1)(x_attn)
    r = info["r"].pop(0) if info["r"] else 0
    if r > 0:
        merge, _ = impl.bipartite_soft_matching(metric, r, info["class_token"], info["distill_token"])
        if info["trace_source"]:
            info["source"] = impl.merge_source(merge, x, info["source"])
        x, info["size"] = impl.merge_wavg(merge, x, info["size"])
    return x + _branch(self, 2)(self.mlp(self.norm2(x)))


_PATCHED = {}


def _patched_class(cls, name, attrs):
    key = (cls, name)
    if key not in _PATCHED:
        _PATCHED[key] = type(name + cls.__name__, (cls,), dict(attrs, _tome_original_class=cls))
    return _PATCHED[key]


def _model_forward(self, *args, **kwargs):
    self._tome_info["r"] = parse_r(len(self.blocks), self.r)
    self._tome_info["size"] = None
    self._tome_info["source"] = None
    return self._tome_original_class.forward(self, *args, **kwargs)


def apply_tome(model: nn.Module, r=0, trace_source: bool = False, prop_attn: bool = True, fused: bool = True,
               class_token: bool = None, distill_token: bool = None) -> nn.Module:
    """Patch `model` (in place) for ToMe with `r` tokens merged per block; returns the model.
    After a forward, model._tome_info["size"] ([B, T, 1]) and ["source"] (with trace_source) describe the merges."""
    if not hasattr(model, "blocks"):
        raise ValueError("model must have .blocks (a timm-style ViT)")
    if class_token is None:
        class_token = getattr(model, "cls_token", None) is not None
    if distill_token is None:
        distill_token = getattr(model, "dist_token", None) is not None
    model.__class__ = _patched_class(getattr(model, "_tome_original_class", type(model)), "ToMe",
                                     {"forward": _model_forward})
    model.r = r
    model._tome_info = {"r": [], "size": None, "source": None, "trace_source": trace_source,
                        "prop_attn": prop_attn, "class_token": bool(class_token),
                        "distill_token": bool(distill_token), "fused": fused}
    for block in model.blocks:
        block.__class__ = _patched_class(getattr(block, "_tome_original_class", type(block)), "ToMe",
                                         {"forward": _tome_block_forward})
        block._tome_info = model._tome_info
    return model


def remove_tome(model: nn.Module) -> nn.Module:
    """Undo apply_tome."""
    for m in [model, *getattr(model, "blocks", [])]:
        orig = getattr(type(m), "_tome_original_class", None)
        if orig is not None:
            m.__class__ = orig
            m.__dict__.pop("_tome_info", None)
    return model
