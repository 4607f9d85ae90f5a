"""Per-code usage counts, perplexity and the EMA codebook update (vector-quantize-pytorch semantics), with
deterministic fused statistics and torch.distributed synchronisation.

    counts = code_counts(indices, K)                 # int64 [K], deterministic, CPU + CUDA
    counts, sums = ema_stats(x, indices, K)          # int64 [K], fp32 (fp64) [K, D]: one fused segment sum
    info = ema_update_(embed, cluster_size, embed_avg, x, indices, decay=0.8, eps=1e-5, dead_threshold=0)

ema_stats never builds the N x K one-hot the anchor multiplies with; per code, rows are summed in increasing
row order on CPU and GPU alike (the GPU kernel does a stable counting sort first), so results are
bit-reproducible run to run and equal between the CPU and CUDA kernels.

ema_update_ (in place, under no_grad): counts and sums are all-reduced over the default process group when
torch.distributed is initialized (world size > 1), then cluster_size.lerp_(counts, 1 - decay),
embed_avg.lerp_(sums, 1 - decay), Laplace smoothing cs = (cs + eps) / (sum(cs) + K eps) * sum(cs),
embed = embed_avg / cs. Codes with cluster_size < dead_threshold are replaced by rows of the batch (without
duplicates when the batch has enough rows; with replacement otherwise), sampled on rank 0 and broadcast, with
cluster_size = dead_threshold and embed_avg = vector * dead_threshold, as the anchor does. Every rank must call
it the same number of times (the collectives are unconditional when distributed), which avoids the anchor's
hangs where only some ranks had dead codes.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .._args import as_float, fcheck, fcheck_dim, fcheck_floating, fcheck_type
from .._register import register_fake
from ._qcommon import acc_dtype, check_float, check_index

__all__ = ["code_counts", "perplexity", "ema_stats", "ema_update_", "is_distributed"]

_ops = torch.ops.imtok_cuda


def _check_k(k, name="K"):
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if not 1 <= k <= 2**31 - 1:
        raise ValueError(f"{name} must be in [1, 2^31), got {k}")


def code_counts(indices: torch.Tensor, K: int) -> torch.Tensor:
    """Usage count of each of the K codes over all entries of indices (int64 [K])."""
    check_index(indices, "indices")
    _check_k(K)
    return _ops.vq_code_counts(indices, K)


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(H(counts / sum(counts))) (0 log 0 = 0), fp32 scalar; 1 for an empty batch."""
    p = counts.double() / counts.sum().clamp(min=1)
    h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum()
    return h.exp().float()


def ema_stats(x: torch.Tensor, indices: torch.Tensor, K: int):
    """(counts int64 [K], sums [K, D]) for x [N, D] and indices [N]; sums fp32 (fp64 for fp64 x)."""
    check_float(x, "x")
    check_index(indices, "indices")
    _check_k(K)
    if x.dim() != 2:
        raise ValueError(f"x must have 2 dimensions [N, D], got shape {tuple(x.shape)}")
    if indices.dim() != 1 or indices.shape[0] != x.shape[0]:
        raise ValueError(f"indices must have shape [N] = [{x.shape[0]}], got {tuple(indices.shape)}")
    return _ops.vq_ema_stats(x.detach(), indices, K)


@register_fake("vq_code_counts")
def _counts_fake(indices, K):
    fcheck_type(indices.dtype in (torch.int32, torch.int64), lambda: "indices must be int64 or int32, got %s" % (
        indices.dtype,))
    fcheck(1 <= K <= 2**31 - 1, lambda: "K must be in [1, 2^31), got %s" % K)
    return indices.new_empty((K,), dtype=torch.int64)


@register_fake("vq_ema_stats")
def _ema_fake(x, indices, K):
    fcheck_floating(x, "x")
    fcheck_dim(x, 2, "x")
    fcheck_type(indices.dtype in (torch.int32, torch.int64), lambda: "indices must be int64 or int32, got %s" % (
        indices.dtype,))
    fcheck_dim(indices, 1, "indices")
    fcheck(indices.shape[0] == x.shape[0], lambda: "indices.shape[0] must equal x.shape[0] = %s, got shape %s" % (
        x.shape[0], tuple(indices.shape)))
    fcheck(1 <= K <= 2**31 - 1, lambda: "K must be in [1, 2^31), got %s" % K)
    return x.new_empty((K,), dtype=torch.int64), x.new_empty((K, x.shape[1]), dtype=acc_dtype(x.dtype))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def ema_update_(embed: torch.Tensor, cluster_size: torch.Tensor, embed_avg: torch.Tensor, x: torch.Tensor,
                indices: torch.Tensor, decay: float = 0.8, eps: float = 1e-5, dead_threshold: float = 0.0,
                sync: bool = True, generator: torch.Generator | None = None) -> dict:
    """One EMA step on the buffers embed [K, D], cluster_size [K], embed_avg [K, D] (all updated in place) from
    the batch x [..., D] quantized with the old codebook to indices [...]. Returns a dict with the batch's
    (all-reduced) counts, the number of replaced dead codes and the replaced code ids."""
    decay, eps = as_float(decay, "decay"), as_float(eps, "eps")
    dead_threshold = as_float(dead_threshold, "dead_threshold")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    if not eps > 0:  # eps = 0 divides an unused code's zero embed_avg by a zero cluster size: NaN codes
        raise ValueError(f"eps (the Laplace smoothing) must be positive, got {eps}")
    if dead_threshold < 0:
        raise ValueError(f"dead_threshold must be >= 0, got {dead_threshold}")
    K, D = embed.shape
    x2 = x.detach().reshape(-1, D)
    counts, sums = ema_stats(x2, indices.reshape(-1), K)
    distributed = sync and is_distributed()
    if distributed:
        dist.all_reduce(counts)
        dist.all_reduce(sums)
    cluster_size.lerp_(counts.to(cluster_size.dtype), 1.0 - decay)
    embed_avg.lerp_(sums.to(embed_avg.dtype), 1.0 - decay)
    n = cluster_size.sum()
    cs = (cluster_size + eps) / (n + K * eps) * n
    embed.copy_(embed_avg / cs[:, None])
    replaced = torch.empty(0, dtype=torch.long, device=embed.device)
    if dead_threshold > 0:
        dead = (cluster_size < dead_threshold).nonzero().flatten()
        num = int(dead.numel())
        # num is the same on every rank (cluster_size is synchronized), so every rank reaches the broadcast
        if num > 0 and (x2.shape[0] > 0 or distributed):
            if x2.shape[0] == 0:  # this rank has no rows: it receives rank 0's choice
                vectors = embed.new_zeros(num, D)
            else:
                if x2.shape[0] >= num:
                    pick = torch.randperm(x2.shape[0], generator=generator, device="cpu")[:num]
                else:
                    pick = torch.randint(x2.shape[0], (num,), generator=generator, device="cpu")
                vectors = x2[pick.to(x2.device)].to(embed.dtype)
            if distributed:
                dist.broadcast(vectors, src=0)
            embed[dead] = vectors
            cluster_size[dead] = dead_threshold
            embed_avg[dead] = vectors * dead_threshold
            replaced = dead
    return {"counts": counts, "num_replaced": int(replaced.numel()), "replaced": replaced}
