"""Token pruning ops: EViT keep-and-fuse, GTP-ViT graph propagation, FasterVLM top-k mask + packed gather.

Every op equals its reference in ``imtok_cuda.reference.prune`` (the official code's conventions, row order
included) and has a CPU and a CUDA kernel:

    evit_keep_fuse(x, cls_attn, left)        [cls, top-left tokens by CLS attention (descending), fused token]
    gtp_graph(x, graph_type, K)              normalized spatial / semantic / mixed graph as neighbour lists
    gtp_propagate(x, kept, prop, graph, a)   x_kept += a * G[kept, prop] @ x_prop over the neighbour lists,
                                             G <- G[kept, kept], token_scales updated the same way
    gtp_select(attn, num_prop)               MixedAttnMax rank + argsort (plain PyTorch)
    cls_attn(q, k, scale)                    CLS-row attention over heads from q, k (no attention map)
    topk_mask(scores, k)                     boolean mask of the k highest scores (kept tokens keep spatial order)
    gather_packed(x, mask)                   kept tokens of every row packed [total, C] + cu_seqlens int32 [B + 1]

Sparse graph format: ``nbr_idx [B, M, K]`` int64 lists the columns j with G[r, j] != 0 for image token r
(M = N - 1 image tokens, CLS excluded; -1 = empty slot), ``nbr_w [B, M, K]`` the weights (0 in empty slots).
"""
import math

import torch

from . import _loader  # noqa: F401  (loads the extension)
from ._args import as_bool, as_float, as_int, fcheck, fcheck_dim, fcheck_dtype, fcheck_floating, fcheck_type
from ._register import register_autograd, register_fake

__all__ = [
    "evit_left_tokens", "evit_cls_attn", "evit_keep_fuse",
    "gtp_graph", "gtp_rank", "gtp_select", "gtp_propagate", "gtp_graph_select",
    "cls_attn", "topk_mask", "gather_packed", "fastervlm_prune",
]

_ops = torch.ops.imtok_cuda
_MAX_NEIGHBOURS = _loader.LIMITS["max_graph_neighbours"]
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_float(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError("%s must be a tensor, got %s" % (name, type(t).__name__))
    if t.dtype not in _FLOATS:
        raise TypeError("%s must be float16, bfloat16, float32 or float64, got %s" % (name, t.dtype))


def _check_dim(t, d, name):
    if t.dim() != d:
        raise ValueError("%s must have %d dimensions, got shape %s" % (name, d, tuple(t.shape)))


# ---------------------------------------------------------------------------------------------------------------
# EViT
# ---------------------------------------------------------------------------------------------------------------
def evit_left_tokens(num_tokens, keep_rate):
    """Kept tokens at an EViT pruning layer: ceil(keep_rate * (N - 1)); N counts CLS and an earlier fused token."""
    return math.ceil(keep_rate * (num_tokens - 1))


def evit_cls_attn(attn):
    """attn [B, H, N, N] -> CLS-row attention to the other tokens averaged over heads [B, N-1] (not renormalized)."""
    return attn[:, :, 0, 1:].mean(dim=1)


def evit_keep_fuse(x, cls_attn, left, fuse=True):
    """EViT token reorganization in one kernel.

    x [B, N, C] (CLS first), cls_attn [B, N-1] (same dtype), left in [1, N-1].
    Returns (out, kept_idx): out = [cls, x[1 + kept_idx], fused] [B, left + 1 + fuse, C] with kept_idx [B, left]
    (int64, into x[:, 1:]) in descending score order (ties: lower index first) and fused = sum over the other
    tokens of x_i * cls_attn_i (unnormalized). left == N - 1 is EViT's no-op: (x, None).
    Differentiable in x and cls_attn.
    """
    _check_float(x, "x")
    _check_float(cls_attn, "cls_attn")
    _check_dim(x, 3, "x")
    _check_dim(cls_attn, 2, "cls_attn")
    B, N, C = x.shape
    if tuple(cls_attn.shape) != (B, N - 1):
        raise ValueError("cls_attn must have shape %s, got %s" % ((B, N - 1), tuple(cls_attn.shape)))
    left, fuse = as_int(left, "left"), as_bool(fuse, "fuse")
    if not 1 <= left <= N - 1:
        raise ValueError("left must be an int in [1, N - 1] = [1, %d], got %r" % (N - 1, left))
    if left == N - 1:
        return x, None
    return _ops.prune_evit_keep_fuse(x, cls_attn.to(x.dtype), left, fuse)


# ---- fake kernels: csrc/prune/prune_checks.h restated (shapes and dtypes; index values are checked by the
# kernels' launchers, which fake tensors cannot do) ---------------------------------------------------------
def _fsize(t, d, want, name):
    fcheck(t.shape[d] == want, lambda: "%s.shape[%d] must be %s, got shape %s" % (name, d, want, tuple(t.shape)))


def _fsame(a, na, b, nb):
    fcheck_type(a.dtype == b.dtype, lambda: "%s and %s must have the same dtype, got %s and %s" % (
        na, nb, a.dtype, b.dtype))


@register_fake("prune_evit_keep_fuse")
def _evit_fake(x, cls_attn, left, fuse=True):
    fcheck_floating(x, "x")
    fcheck_dim(x, 3, "x")
    fcheck_dim(cls_attn, 2, "cls_attn")
    _fsame(x, "x", cls_attn, "cls_attn")
    B, N, C = x.shape
    fcheck(N >= 2, lambda: "x must hold the CLS token and at least one other token (x.shape[1] >= 2), got shape %s"
           % (tuple(x.shape),))
    _fsize(cls_attn, 0, B, "cls_attn")
    _fsize(cls_attn, 1, N - 1, "cls_attn")
    fcheck(1 <= left <= N - 1, lambda: "left must be in [1, N - 1] = [1, %s], got %s" % (N - 1, left))
    return x.new_empty(B, left + 1 + int(fuse), C), x.new_empty(B, left, dtype=torch.long)


@register_fake("prune_evit_keep_fuse_backward")
def _evit_bwd_fake(grad_out, x, cls_attn, kept_idx, fuse):
    fcheck_floating(x, "x")
    fcheck_dim(x, 3, "x")
    fcheck_dim(grad_out, 3, "grad_out")
    fcheck_dim(cls_attn, 2, "cls_attn")
    fcheck_dtype(kept_idx, torch.int64, "kept_idx")
    fcheck_dim(kept_idx, 2, "kept_idx")
    _fsame(x, "x", cls_attn, "cls_attn")
    _fsame(x, "x", grad_out, "grad_out")
    B, N, C = x.shape
    fcheck(N >= 2, lambda: "x.shape[1] must be >= 2, got shape %s" % (tuple(x.shape),))
    _fsize(cls_attn, 0, B, "cls_attn")
    _fsize(cls_attn, 1, N - 1, "cls_attn")
    _fsize(kept_idx, 0, B, "kept_idx")
    left = kept_idx.shape[1]
    fcheck(1 <= left <= N - 1, lambda: "kept_idx.shape[1] must be in [1, %s], got %s" % (N - 1, left))
    _fsize(grad_out, 0, B, "grad_out")
    _fsize(grad_out, 1, left + 1 + (1 if fuse else 0), "grad_out")
    _fsize(grad_out, 2, C, "grad_out")
    return torch.empty_like(x), torch.empty_like(cls_attn)


def _evit_setup(ctx, inputs, output):
    x, cls_attn, left, fuse = inputs
    ctx.save_for_backward(x, cls_attn, output[1])
    ctx.fuse = fuse
    ctx.mark_non_differentiable(output[1])


def _evit_backward(ops, ctx, grad_out, grad_kept):
    x, cls_attn, kept = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None
    gx, ga = ops.prune_evit_keep_fuse_backward(grad_out.contiguous(), x, cls_attn, kept, ctx.fuse)
    return gx, ga, None, None


register_autograd("prune_evit_keep_fuse", _evit_backward, _evit_setup)


# ---------------------------------------------------------------------------------------------------------------
# GTP-ViT
# ---------------------------------------------------------------------------------------------------------------
_GRAPH_KINDS = ("spatial", "semantic", "mixed")


def gtp_graph(x, graph_type="spatial", num_neighbours=8):
    """Normalized GTP-ViT graph D^-1/2 A D^-1/2 over the image tokens of x [B, N, C] (CLS first, excluded) as
    neighbour lists (nbr_idx [B, N-1, K] int64, nbr_w [B, N-1, K] in x's dtype).

    "spatial": 8-neighbours on the sqrt(N-1) grid (K = 8); "semantic": the num_neighbours most cosine-similar
    other tokens (K = num_neighbours <= 32), computed without the (N-1)^2 similarity matrix; "mixed": their union
    (K = 8 + num_neighbours)."""
    _check_float(x, "x")
    _check_dim(x, 3, "x")
    if not isinstance(graph_type, str) or graph_type not in _GRAPH_KINDS:
        raise ValueError("graph_type must be 'spatial', 'semantic' or 'mixed', got %r" % (graph_type,))
    return _ops.prune_gtp_graph(x, graph_type, as_int(num_neighbours, "num_neighbours"))


def gtp_rank(attn):
    """MixedAttnMax: max_h diag(attn)[1:] * max_h column_sums(attn)[1:] -> [B, N-1]."""
    return torch.diagonal(attn, dim1=-2, dim2=-1)[:, :, 1:].amax(1) * attn[:, :, :, 1:].sum(-2).amax(1)


def gtp_rank_from_side_outputs(q, k, lse, col_sum, key_bias=None, scale=None):
    """gtp_rank without the attention map, from the fused attention's side outputs: the diagonal is
    p_ii = exp(scale q_i . k_i + key_bias_i - lse_i) (one dot product per token), the column sums per head are
    col_sum [B, H, N]. q, k [B, H, N, d]; lse [B, H, N]; key_bias [B, N] or None. -> [B, N-1] (lse's dtype)."""
    acc = lse.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q.to(acc) * k.to(acc)).sum(-1) * scale
    if key_bias is not None:
        s = s + key_bias.to(acc).unsqueeze(1)
    diag = torch.exp(s - lse)
    return diag[:, :, 1:].amax(1) * col_sum[:, :, 1:].amax(1)


def gtp_select(attn, num_prop):
    """(kept_idx [B, N-1-P], prop_idx [B, P]) into x (CLS = 0) from the attention map: argsort(rank, descending),
    the first N-1-P kept in rank order, the last P propagated (P = 0 keeps every token)."""
    return gtp_select_by_rank(gtp_rank(attn), num_prop)


def gtp_select_by_rank(rank, num_prop):
    """gtp_select from the rank [B, N-1] (gtp_rank or gtp_rank_from_side_outputs)."""
    num_prop = as_int(num_prop, "num_prop")
    if rank.dim() != 2:
        raise ValueError("rank must have 2 dimensions [B, N-1], got shape %s" % (tuple(rank.shape),))
    if not 0 <= num_prop <= rank.shape[1]:
        raise ValueError("num_prop must be in [0, N - 1] = [0, %d] (the image tokens), got %d" % (
            rank.shape[1], num_prop))
    order = torch.argsort(rank, dim=1, descending=True) + 1
    n = order.shape[1] - num_prop
    return order[:, :n], order[:, n:]


def gtp_graph_select(nbr_idx, nbr_w, kept_idx):
    """G <- G[kept, kept] on neighbour lists (kept_idx into x, 1-based): row r is the old row kept_idx[r] - 1 with
    the columns that are kept renumbered to their new positions; the other entries are dropped."""
    return _ops.prune_gtp_graph_select(nbr_idx, nbr_w, kept_idx)


def gtp_propagate(x, kept_idx, prop_idx, nbr_idx, nbr_w, alpha, token_scales=None):
    """GTP-ViT graph propagation over neighbour lists.

    x [B, N, C] (CLS first); kept_idx [B, Nk], prop_idx [B, P] (int64 into x, distinct, CLS excluded);
    (nbr_idx, nbr_w) the graph over the N - 1 image tokens. Returns
    (x' [B, 1 + Nk, C] = [cls, x_kept + alpha * G[kept, prop] @ x_prop], (nbr_idx', nbr_w') = G[kept, kept],
    token_scales' [B, 1 + Nk] updated the same way, or None). Differentiable in x."""
    _check_float(x, "x")
    _check_dim(x, 3, "x")
    alpha = as_float(alpha, "alpha")
    nbr_w = nbr_w.to(x.dtype)
    out = _ops.prune_gtp_propagate(x, kept_idx, prop_idx, nbr_idx, nbr_w, alpha)
    if token_scales is not None:
        ts = _ops.prune_gtp_propagate(token_scales.to(x.dtype).unsqueeze(-1), kept_idx, prop_idx, nbr_idx, nbr_w,
                                      alpha).squeeze(-1).to(token_scales.dtype)
    else:
        ts = None
    return out, _ops.prune_gtp_graph_select(nbr_idx, nbr_w, kept_idx), ts


@register_fake("prune_gtp_graph")
def _gtp_graph_fake(x, graph_type="spatial", num_neighbours=8):
    fcheck_floating(x, "x")
    fcheck_dim(x, 3, "x")
    fcheck(graph_type in _GRAPH_KINDS, lambda: "graph_type must be 'spatial', 'semantic' or 'mixed', got '%s'" % (
        graph_type,))
    B, N, C = x.shape
    M = N - 1
    fcheck(M >= 1, lambda: "x must hold the CLS token and at least one image token, got shape %s" % (
        tuple(x.shape),))
    if graph_type != "spatial":
        fcheck(1 <= num_neighbours <= _MAX_NEIGHBOURS, lambda: "num_neighbours must be in [1, %d], got %s" % (
            _MAX_NEIGHBOURS, num_neighbours))
        fcheck(num_neighbours <= M - 1, lambda: "num_neighbours must be < the number of image tokens (%s), got %s"
               % (M, num_neighbours))
    if graph_type != "semantic":
        side = math.isqrt(M) if isinstance(M, int) else int(math.sqrt(M))
        fcheck(side * side == M, lambda: "a spatial graph needs a square grid of image tokens, got %s "
               "(x.shape[1] - 1)" % M)
    K = {"spatial": 8, "semantic": num_neighbours, "mixed": 8 + num_neighbours}[graph_type]
    return x.new_empty(B, N - 1, K, dtype=torch.long), x.new_empty(B, N - 1, K)


def _fake_graph_lists(nbr_idx, nbr_w, B, M, like):
    fcheck_dtype(nbr_idx, torch.int64, "nbr_idx")
    fcheck_dim(nbr_idx, 3, "nbr_idx")
    fcheck_dim(nbr_w, 3, "nbr_w")
    _fsame(like, "x", nbr_w, "nbr_w")
    _fsize(nbr_idx, 0, B, "nbr_idx")
    _fsize(nbr_idx, 1, M, "nbr_idx")
    fcheck(tuple(nbr_w.shape) == tuple(nbr_idx.shape), lambda: "nbr_w must have the shape of nbr_idx %s, got %s"
           % (tuple(nbr_idx.shape), tuple(nbr_w.shape)))


def _fake_index(t, name):
    fcheck_dtype(t, torch.int64, name)
    fcheck_dim(t, 2, name)


def _fake_alpha(alpha):
    fcheck(math.isfinite(alpha), lambda: "alpha must be finite, got %s" % alpha)


@register_fake("prune_gtp_propagate")
def _gtp_prop_fake(x, kept_idx, prop_idx, nbr_idx, nbr_w, alpha):
    fcheck_floating(x, "x")
    fcheck_dim(x, 3, "x")
    _fake_index(kept_idx, "kept_idx")
    _fake_index(prop_idx, "prop_idx")
    B, N = x.shape[0], x.shape[1]
    fcheck(N >= 1, lambda: "x must hold the CLS token, got shape %s" % (tuple(x.shape),))
    _fsize(kept_idx, 0, B, "kept_idx")
    _fsize(prop_idx, 0, B, "prop_idx")
    _fake_graph_lists(nbr_idx, nbr_w, B, N - 1, x)
    _fake_alpha(alpha)
    return x.new_empty(x.shape[0], kept_idx.shape[1] + 1, x.shape[2])


@register_fake("prune_gtp_propagate_backward")
def _gtp_prop_bwd_fake(grad_out, kept_idx, prop_idx, nbr_idx, nbr_w, alpha, num_tokens):
    fcheck_floating(grad_out, "grad_out")
    fcheck_dim(grad_out, 3, "grad_out")
    _fake_index(kept_idx, "kept_idx")
    _fake_index(prop_idx, "prop_idx")
    B = grad_out.shape[0]
    fcheck(num_tokens >= 1, lambda: "num_tokens must be >= 1, got %s" % num_tokens)
    _fsize(kept_idx, 0, B, "kept_idx")
    _fsize(prop_idx, 0, B, "prop_idx")
    _fsize(grad_out, 1, kept_idx.shape[1] + 1, "grad_out")
    _fake_graph_lists(nbr_idx, nbr_w, B, num_tokens - 1, grad_out)
    _fake_alpha(alpha)
    return grad_out.new_empty(grad_out.shape[0], num_tokens, grad_out.shape[2])


@register_fake("prune_gtp_graph_select")
def _gtp_select_fake(nbr_idx, nbr_w, kept_idx):
    fcheck_dtype(nbr_idx, torch.int64, "nbr_idx")
    fcheck_dim(nbr_idx, 3, "nbr_idx")
    fcheck_floating(nbr_w, "nbr_w")
    _fake_index(kept_idx, "kept_idx")
    fcheck(tuple(nbr_w.shape) == tuple(nbr_idx.shape), lambda: "nbr_w must have the shape of nbr_idx %s, got %s"
           % (tuple(nbr_idx.shape), tuple(nbr_w.shape)))
    _fsize(kept_idx, 0, nbr_idx.shape[0], "kept_idx")
    B, _, K = nbr_idx.shape
    return nbr_idx.new_empty(B, kept_idx.shape[1], K), nbr_w.new_empty(B, kept_idx.shape[1], K)


def _gtp_setup(ctx, inputs, output):
    x, kept, prop, nbr_idx, nbr_w, alpha = inputs
    ctx.save_for_backward(kept, prop, nbr_idx, nbr_w)
    ctx.alpha = alpha
    ctx.num_tokens = x.shape[1]


def _gtp_backward(ops, ctx, grad_out):
    kept, prop, nbr_idx, nbr_w = ctx.saved_tensors
    gx = ops.prune_gtp_propagate_backward(grad_out.contiguous(), kept, prop, nbr_idx, nbr_w, ctx.alpha,
                                           ctx.num_tokens)
    return gx, None, None, None, None, None


register_autograd("prune_gtp_propagate", _gtp_backward, _gtp_setup)


# ---------------------------------------------------------------------------------------------------------------
# FasterVLM
# ---------------------------------------------------------------------------------------------------------------
def cls_attn(q, k, scale):
    """CLS-row attention averaged over heads, from q [B, H, Nq, D] (row 0 = CLS query; Nq may be 1) and
    k [B, H, N, D]: softmax((q_cls * scale) . k_j)[j >= 1] averaged over heads -> [B, N-1], fp32 accumulation.
    The FasterVLM / EViT score without the [B, H, N, N] attention map (one GEMV + softmax per head)."""
    _check_float(q, "q")
    _check_dim(q, 4, "q")
    _check_dim(k, 4, "k")
    return _ops.prune_cls_attn(q, k, as_float(scale, "scale"))


@register_fake("prune_cls_attn")
def _cls_attn_fake(q, k, scale):
    fcheck_floating(q, "q")
    fcheck_dim(q, 4, "q")
    fcheck_dim(k, 4, "k")
    _fsame(q, "q", k, "k")
    for d in (0, 1, 3):
        _fsize(k, d, q.shape[d], "k")
    fcheck(q.shape[2] >= 1, lambda: "q must hold the CLS query (q.shape[2] >= 1), got shape %s" % (tuple(q.shape),))
    fcheck(k.shape[2] >= 1, lambda: "k must hold at least the CLS key (k.shape[2] >= 1), got shape %s" % (
        tuple(k.shape),))
    fcheck(math.isfinite(scale), lambda: "scale must be finite, got %s" % scale)
    return q.new_empty(q.shape[0], k.shape[2] - 1)


def topk_mask(scores, k):
    """Boolean mask [B, N] of the k highest scores of every row (NaN counts as largest, ties: lower index)."""
    _check_float(scores, "scores")
    _check_dim(scores, 2, "scores")
    k = as_int(k, "k")
    if not 0 <= k <= scores.shape[1]:
        raise ValueError("k must be an int in [0, %d], got %r" % (scores.shape[1], k))
    return _ops.prune_topk_mask(scores, k)


def gather_packed(x, mask):
    """x [B, N, C], mask [B, N] bool -> (packed [total, C]: each row's kept tokens in spatial order, rows one after
    another; cu_seqlens int32 [B + 1]). The packed size is data-dependent (one device sync on CUDA)."""
    _check_float(x, "x")
    _check_dim(x, 3, "x")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a torch.bool tensor, got %s" % (getattr(mask, "dtype", type(mask)),))
    return _ops.prune_gather_packed(x, mask)


def fastervlm_prune(image_features, scores, k, packed=False):
    """FasterVLM: keep the k image tokens with the highest CLS attention in spatial order.
    Returns ([B, k, C], mask), or with packed=True (packed [B * k, C], cu_seqlens)."""
    mask = topk_mask(scores, k)
    p, cu = gather_packed(image_features, mask)
    if packed:
        return p, cu
    return p.view(image_features.shape[0], k, image_features.shape[-1]), mask


@register_fake("prune_topk_mask")
def _topk_mask_fake(scores, k):
    fcheck_floating(scores, "scores")
    fcheck_dim(scores, 2, "scores")
    fcheck(0 <= k <= scores.shape[1], lambda: "k must be in [0, scores.shape[1]] = [0, %s], got %s" % (
        scores.shape[1], k))
    return scores.new_empty(scores.shape, dtype=torch.bool)


@register_fake("prune_gather_packed")
def _gather_packed_fake(x, mask):
    fcheck_floating(x, "x")
    fcheck_dim(x, 3, "x")
    fcheck_dtype(mask, torch.bool, "mask")
    fcheck_dim(mask, 2, "mask")
    _fsize(mask, 0, x.shape[0], "mask")
    _fsize(mask, 1, x.shape[1], "mask")
    total = torch.library.get_ctx().new_dynamic_size()
    return x.new_empty(total, x.shape[2]), x.new_empty(x.shape[0] + 1, dtype=torch.int32)
