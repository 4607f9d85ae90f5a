"""GTP-ViT (Xu et al., WACV 2024; Ackesnal/GTP-ViT models_v3.py) on a timm VisionTransformer.

A graph over the image tokens is built once from the input of the first block (spatial 8-neighbours, semantic
top-K cosine, or both), symmetric-normalized. Every block: attention with log(token_scales) added to the logits,
x += attn; rank = max_h diag(attn)[1:] * max_h column_sums(attn)[1:] (from the fused attention's LSE and
per-head column sums: no attention map is stored); the num_prop lowest-ranked tokens are propagated into their
graph neighbours (x_kept += alpha * G[kept, prop] @ x_prop) and dropped; G <- G[kept, kept]; token_scales updated
the same way; then the MLP. The fused path keeps the graph as neighbour lists (imtok_cuda.prune.gtp_graph /
gtp_propagate, no dense N x N product); inside imtok.use_reference() it is the dense reference.
Needs a class token and no other prefix token, and a square patch grid for the spatial graph.
After a forward, model._gtp_info["token_counts"] lists the tokens entering each block and leaving the last.
"""
from torch import nn

from imtok.layers.attention import self_attention
from imtok.layers.switch import reference_enabled
from imtok_cuda import prune as _fused
from imtok_cuda._args import as_int
from imtok_cuda.reference import prune as _reference

from ._patch import check_no_mask, class_token_vit_blocks, patch_class, residual_branch, unpatch

__all__ = ["apply_gtp", "remove_gtp"]

_TAG = "GTP"


def _start(info, x):
    """Graph and token scales of a new forward pass, from the input of the first block."""
    if reference_enabled():
        info["graph"] = ("dense", _reference.gtp_build_graph(x, info["graph_type"], info["num_neighbours"]))
    else:
        info["graph"] = ("lists", _fused.gtp_graph(x, info["graph_type"], info["num_neighbours"]))
    info["token_scales"] = x.new_ones(x.shape[0], x.shape[1]) if info["token_scale"] else None
    info["token_counts"] = []


def _propagate(info, x, kept, prop):
    kind, graph = info["graph"]
    ts = info["token_scales"]
    if kind == "dense":
        x, graph, ts = _reference.gtp_propagate(x, graph, kept, prop, info["alpha"], ts)
    else:
        x, graph, ts = _fused.gtp_propagate(x, kept, prop, graph[0], graph[1], info["alpha"], ts)
    info["graph"], info["token_scales"] = (kind, graph), ts
    return x


def _gtp_block_forward(self, x, attn_mask=None, is_causal=False):
    check_no_mask(attn_mask, is_causal)
    info = self._gtp_info
    if self._gtp_index == 0:
        _start(info, x)
    info["token_counts"].append(x.shape[1])
    num_prop = min(self._gtp_num_prop, x.shape[1] - 2)  # keep at least one image token
    ts = info["token_scales"]
    bias = None if ts is None else ts.log().to(x.dtype)
    need = ("q", "k", "lse", "col_sum_heads") if num_prop > 0 else ()
    res = self_attention(self.attn, self.norm1(x), key_bias=bias, need=need)
    out, side = res if need else (res, None)
    x = x + residual_branch(self, 1, out)
    if num_prop > 0:
        rank = _fused.gtp_rank_from_side_outputs(side["q"], side["k"], side["lse"], side["col_sum_heads"], bias,
                                                 self.attn.scale)
        kept, prop = _fused.gtp_select_by_rank(rank, num_prop)
        x = _propagate(info, x, kept, prop)
    x = x + residual_branch(self, 2, self.mlp(self.norm2(x)))
    if self._gtp_index == self._gtp_last:
        info["token_counts"].append(x.shape[1])
    return x


def apply_gtp(model: nn.Module, num_prop=8, graph_type: str = "spatial", num_neighbours: int = 8,
              alpha: float = 0.1, token_scale: bool = True) -> nn.Module:
    """Turn a timm ViT into a GTP-ViT (in place; returns the model). num_prop: tokens propagated per block, an
    int or one per block. graph_type: "spatial" | "semantic" | "mixed"."""
    if graph_type not in ("spatial", "semantic", "mixed"):
        raise ValueError(f"graph_type must be 'spatial', 'semantic' or 'mixed', got {graph_type!r}")
    blocks = class_token_vit_blocks(model, "GTP-ViT")
    props = list(num_prop) if isinstance(num_prop, (list, tuple)) else [num_prop] * len(blocks)
    if len(props) != len(blocks):
        raise ValueError(f"num_prop needs one value per block ({len(blocks)}), got {len(props)}")
    props = [as_int(p, "num_prop") for p in props]
    if min(props) < 0:
        raise ValueError(f"num_prop must be >= 0 (tokens propagated per block), got {num_prop}")
    remove_gtp(model)
    info = {"graph_type": graph_type, "num_neighbours": int(num_neighbours), "alpha": float(alpha),
            "token_scale": bool(token_scale), "graph": None, "token_scales": None, "token_counts": []}
    model._gtp_info = info
    for i, (block, p) in enumerate(zip(blocks, props)):
        patch_class(block, _TAG, {"forward": _gtp_block_forward})
        block._gtp_info, block._gtp_index, block._gtp_last, block._gtp_num_prop = info, i, len(blocks) - 1, p
    return model


def remove_gtp(model: nn.Module) -> nn.Module:
    """Undo apply_gtp: the original classes, no added attributes."""
    for block in getattr(model, "blocks", []):
        unpatch(block, _TAG, ("_gtp_info", "_gtp_index", "_gtp_last", "_gtp_num_prop"))
    model.__dict__.pop("_gtp_info", None)
    return model
