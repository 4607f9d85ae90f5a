"""Token pruning references: EViT keep-and-fuse, GTP-ViT graph propagation, FasterVLM top-k masking.

Pure PyTorch, importing nothing from csrc: the readable specification that the fused kernels are tested against.
Each function follows the official code line for line (row order included):

- EViT: youweiliang/evit, evit.py (Attention.forward / Block.forward, fuse_token=True) and helpers.py
  (complement_idx), read at commit 180a7a3bd532ba19bce2b07e319230d0aca47fbe (evit.py) and
  0999f090edbcb6dea095546b5faeb2750beaf88b (helpers.py).
- GTP-ViT: Ackesnal/GTP-ViT, models_v3.py (select / propagate with standard="MixedAttnMax" / "GraphProp",
  GraphPropagationTransformer.forward_features for the graphs), read at commit
  34d208cc78ffe52dbfdfcd8a877e6d38cc62dc8a. Left out on purpose: the debug file the official propagate() appends to
  on every call (and the GPU sync it costs), and its P = 0 bug (token_rank[:, :-0] is empty, so every token would be
  dropped): here P = 0 keeps every token, in rank order.
- FasterVLM: CLS-row attention of the vision encoder averaged over heads, top-k as a boolean mask, so the kept
  tokens keep their spatial order; the kept tokens of a batch are packed with cu_seqlens.

The sparse graph format used by the fused GTP ops (a neighbour list) is defined here too: row r of
``nbr_idx [B, M, K]`` lists the columns j with G[r, j] != 0 (int64, -1 = empty slot), ``nbr_w [B, M, K]`` their
weights (0 in empty slots). ``dense_to_neighbors`` / ``neighbors_to_dense`` convert between the two.
"""
import math

import torch

__all__ = [
    "complement_idx", "evit_left_tokens", "evit_cls_attn", "evit_keep_fuse",
    "gtp_spatial_graph", "gtp_semantic_graph", "gtp_normalize", "gtp_build_graph", "gtp_rank", "gtp_select",
    "gtp_propagate", "dense_to_neighbors", "neighbors_to_dense",
    "fastervlm_scores", "cls_attn_from_qk", "topk_mask", "gather_packed", "fastervlm_prune",
]


# ---------------------------------------------------------------------------------------------------------------
# EViT
# ---------------------------------------------------------------------------------------------------------------
def complement_idx(idx, dim):
    """set(range(dim)) - set(idx) along the last dimension, ascending (EViT helpers.complement_idx)."""
    a = torch.arange(dim, device=idx.device)
    ndim = idx.ndim
    dims = idx.shape
    n_idx = dims[-1]
    dims = dims[:-1] + (-1,)
    for _ in range(1, ndim):
        a = a.unsqueeze(0)
    a = a.expand(*dims)
    masked = torch.scatter(a, -1, idx, 0)
    compl, _ = torch.sort(masked, dim=-1, descending=False)
    compl = compl.permute(-1, *tuple(range(ndim - 1)))
    compl = compl[n_idx:].permute(*(tuple(range(1, ndim)) + (0,)))
    return compl


def evit_left_tokens(num_tokens, keep_rate):
    """Tokens kept at a pruning layer: ceil(keep_rate * (N - 1)); N counts the CLS (and an earlier fused) token."""
    return math.ceil(keep_rate * (num_tokens - 1))


def evit_cls_attn(attn):
    """attn [B, H, N, N] (softmaxed) -> CLS attention to every other token averaged over heads [B, N-1]
    (not renormalized)."""
    return attn[:, :, 0, 1:].mean(dim=1)


def evit_keep_fuse(x, cls_attn, left, fuse=True):
    """EViT token reorganization after x = x + attn(norm1(x)).

    x [B, N, C] (CLS first; an earlier fused token is an ordinary token here, as in the official code),
    cls_attn [B, N-1], left = kept tokens. Returns (out, idx):
      out = [cls, x[1 + idx] (idx = topk(cls_attn, left, sorted): descending score), fused] with
      fused = sum over the non-kept i of x[1 + i] * cls_attn[i] (unnormalized); [B, left + 1 + fuse, C].
      left == N - 1 is the official no-op: (x, None).
    """
    B, N, C = x.shape
    if left == N - 1:
        return x, None
    assert left >= 1
    _, idx = torch.topk(cls_attn, left, dim=1, largest=True, sorted=True)  # [B, left]
    index = idx.unsqueeze(-1).expand(-1, -1, C)
    non_cls = x[:, 1:]
    x_others = torch.gather(non_cls, dim=1, index=index)  # [B, left, C]
    if not fuse:
        return torch.cat([x[:, 0:1], x_others], dim=1), idx
    compl = complement_idx(idx, N - 1)  # [B, N-1-left]
    non_topk = torch.gather(non_cls, dim=1, index=compl.unsqueeze(-1).expand(-1, -1, C))
    non_topk_attn = torch.gather(cls_attn, dim=1, index=compl)
    extra_token = torch.sum(non_topk * non_topk_attn.unsqueeze(-1), dim=1, keepdim=True)  # [B, 1, C]
    return torch.cat([x[:, 0:1], x_others, extra_token], dim=1), idx


# ---------------------------------------------------------------------------------------------------------------
# GTP-ViT
# ---------------------------------------------------------------------------------------------------------------
def gtp_spatial_graph(num_patches, device=None, dtype=torch.float32):
    """8-neighbour adjacency of a sqrt(M) x sqrt(M) grid, minus identity: [M, M] (0/1)."""
    N = num_patches
    indices = torch.arange(N, device=device)
    row_indices = indices.view(-1, 1).expand(-1, N)
    col_indices = indices.view(1, -1).expand(N, -1)
    side = int(math.sqrt(N))
    row1, col1 = row_indices // side, row_indices % side
    row2, col2 = col_indices // side, col_indices % side
    graph = ((abs(row1 - row2) <= 1).to(dtype) * (abs(col1 - col2) <= 1).to(dtype))
    return graph - torch.eye(N, device=device, dtype=dtype)


def gtp_semantic_graph(x_img, num_neighbours=8):
    """Top-K cosine neighbours of every image token (CLS excluded), minus identity: [B, M, M] (0/1).

    As the official class-token path: threshold = kthvalue(cos, M - K) per row, A = cos >= threshold (the K + 1
    largest, the token itself included), minus identity."""
    M = x_img.shape[1]
    x_normed = x_img / x_img.norm(dim=-1, keepdim=True)
    x_cossim = x_normed @ x_normed.transpose(-1, -2)
    threshold = torch.kthvalue(x_cossim, M - num_neighbours, dim=-1, keepdim=True)[0]
    graph = torch.where(x_cossim >= threshold, 1.0, 0.0).to(x_img.dtype)
    return graph - torch.eye(M, device=x_img.device, dtype=x_img.dtype).unsqueeze(0)


def gtp_normalize(graph):
    """Symmetric normalization D^-1/2 A D^-1/2 with D = row sums (official: diag_embed + two bmm)."""
    degree = graph.sum(-1)
    degree = torch.diag_embed(degree ** (-1 / 2))
    return degree @ graph @ degree


def gtp_build_graph(x, graph_type="spatial", num_neighbours=8):
    """x [B, N, C] with the CLS token first -> normalized graph over the N - 1 image tokens [B, N-1, N-1].
    graph_type: "spatial" | "semantic" | "mixed" (spatial OR semantic)."""
    B, N, C = x.shape
    M = N - 1
    if graph_type in ("semantic", "mixed"):
        semantic = gtp_semantic_graph(x[:, 1:], num_neighbours)
    if graph_type in ("spatial", "mixed"):
        spatial = gtp_spatial_graph(M, device=x.device, dtype=x.dtype).unsqueeze(0).expand(B, -1, -1)
    if graph_type == "spatial":
        graph = spatial
    elif graph_type == "semantic":
        graph = semantic
    elif graph_type == "mixed":
        graph = torch.bitwise_or(semantic.int(), spatial.int()).to(x.dtype)
    else:
        raise ValueError("graph_type must be 'spatial', 'semantic' or 'mixed', got %r" % (graph_type,))
    return gtp_normalize(graph)


def gtp_rank(attn):
    """MixedAttnMax token rank from attn [B, H, N, N]: max_h diag(attn)[1:] * max_h column_sums(attn)[1:]
    (column sums over every query, the CLS row included) -> [B, N-1]."""
    token_rank_1 = torch.diagonal(attn, dim1=-2, dim2=-1)[:, :, 1:].max(1)[0]
    token_rank_2 = attn[:, :, :, 1:].sum(-2).max(1)[0]
    return token_rank_1 * token_rank_2


def gtp_select(attn, num_prop):
    """(index_kept [B, N-1-P], index_prop [B, P]) into x (CLS = 0): argsort(rank, descending); the first N-1-P
    are kept (in rank order), the last P propagated. P = 0 keeps everything (the official code would keep none)."""
    token_rank = torch.argsort(gtp_rank(attn), dim=1, descending=True)
    if num_prop == 0:
        return token_rank + 1, token_rank[:, :0] + 1
    return token_rank[:, :-num_prop] + 1, token_rank[:, -num_prop:] + 1


def gtp_propagate(x, weight, index_kept, index_prop, alpha, token_scales=None):
    """GraphProp (class-token path) on the dense graph weight [B, N-1, N-1]:
    x_kept += alpha * G[kept, prop] @ x_prop; G <- G[kept, kept]; token_scales updated the same way.
    Returns (x [B, 1 + N-1-P, C], weight [B, N-1-P, N-1-P], token_scales [B, 1 + N-1-P] or None)."""
    B, N, C = x.shape
    x_cls = x[:, 0:1]
    x_kept = x.gather(dim=1, index=index_kept.unsqueeze(-1).expand(-1, -1, C))
    x_prop = x.gather(dim=1, index=index_prop.unsqueeze(-1).expand(-1, -1, C))
    index_kept = index_kept - 1
    index_prop = index_prop - 1
    weight = weight.gather(dim=1, index=index_kept.unsqueeze(-1).expand(-1, -1, N - 1))
    weight_prop = weight.gather(dim=2, index=index_prop.unsqueeze(1).expand(-1, weight.shape[1], -1))
    weight = weight.gather(dim=2, index=index_kept.unsqueeze(1).expand(-1, weight.shape[1], -1))
    x_prop = weight_prop @ x_prop
    x_kept = x_kept + alpha * x_prop
    if token_scales is not None:
        token_scales_cls = token_scales[:, 0:1]
        token_scales = token_scales[:, 1:]
        token_scales_kept = token_scales.gather(dim=1, index=index_kept)
        token_scales_prop = token_scales.gather(dim=1, index=index_prop)
        token_scales_prop = weight_prop @ token_scales_prop.unsqueeze(-1)
        token_scales = token_scales_kept + alpha * token_scales_prop.squeeze(-1)
        token_scales = torch.cat((token_scales_cls, token_scales), dim=1)
    return torch.cat((x_cls, x_kept), dim=1), weight, token_scales


def dense_to_neighbors(graph, max_neighbors=None):
    """Dense [B, M, M] -> (nbr_idx int64 [B, M, K], nbr_w [B, M, K]): the non-zeros of each row in ascending
    column order, padded with -1 / 0. K defaults to the largest row count."""
    B, M, _ = graph.shape
    nz = graph != 0
    counts = nz.sum(-1)
    K = int(counts.max().item()) if max_neighbors is None else max_neighbors
    cols = torch.arange(M, device=graph.device).expand(B, M, M)
    key = torch.where(nz, cols, cols + M)  # non-zeros first, ascending column
    order = key.argsort(dim=-1)[..., :K]
    valid = torch.gather(nz, -1, order)
    nbr_idx = torch.where(valid, order, torch.full_like(order, -1))
    nbr_w = torch.where(valid, torch.gather(graph, -1, order), torch.zeros((), dtype=graph.dtype, device=graph.device))
    return nbr_idx, nbr_w


def neighbors_to_dense(nbr_idx, nbr_w, num_cols=None):
    """(nbr_idx [B, M, K], nbr_w) -> dense [B, M, num_cols (default M)]; -1 slots are ignored."""
    B, M, K = nbr_idx.shape
    n = M if num_cols is None else num_cols
    out = torch.zeros(B, M, n + 1, dtype=nbr_w.dtype, device=nbr_w.device)
    idx = torch.where(nbr_idx < 0, torch.full_like(nbr_idx, n), nbr_idx)
    out.scatter_add_(-1, idx, nbr_w)
    return out[..., :n]


# ---------------------------------------------------------------------------------------------------------------
# FasterVLM
# ---------------------------------------------------------------------------------------------------------------
def fastervlm_scores(attn):
    """attn [B, H, 1 + N, 1 + N] of the vision encoder's penultimate layer -> CLS-row attention to the N image
    tokens averaged over heads [B, N]."""
    return attn[:, :, 0, 1:].mean(dim=1)


def cls_attn_from_qk(q, k, scale):
    """CLS-row attention averaged over heads from queries/keys [B, H, N, D] (q may hold only the CLS row):
    softmax((q_cls * scale) @ k^T)[:, :, 0, 1:].mean(heads) -> [B, N-1]; equals fastervlm_scores(attn) of the full
    attention map (what output_attentions=True returns) without forming it."""
    attn = ((q[:, :, :1] * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn[:, :, 0, 1:].mean(dim=1)


def topk_mask(scores, k):
    """Boolean mask [B, N] of the k highest scores per row (kept tokens stay in spatial order when applied)."""
    idx = torch.topk(scores, k, dim=1, largest=True, sorted=False).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)


def gather_packed(x, mask):
    """x [B, N, C], mask [B, N] -> (packed [total, C]: each row's kept tokens in spatial order, rows one after
    another; cu_seqlens int32 [B + 1])."""
    counts = mask.sum(dim=1)
    cu = torch.zeros(x.shape[0] + 1, dtype=torch.int32, device=x.device)
    cu[1:] = torch.cumsum(counts, 0).to(torch.int32)
    return x[mask], cu


def fastervlm_prune(image_features, scores, k):
    """FasterVLM: keep the k image tokens with the highest CLS attention, in spatial order: [B, k, C]."""
    mask = topk_mask(scores, k)
    return image_features[mask].view(image_features.shape[0], k, image_features.shape[-1]), mask
