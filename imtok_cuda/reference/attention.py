"""Explicit softmax attention: the readable specification of imtok_cuda.attention.

    scores[b, h, i, j] = scale * q[b, h, i] . k[b, h, j] + key_bias[b, j]        (scale = 1/sqrt(d) by default)
    scores[b, h, i, j] = -inf   where key_mask[b, j] is False, or (causal) where j > i + (Nk - Nq) and
                                j >= causal_prefix
    lse[b, h, i]       = logsumexp_j scores[b, h, i, j]
    p[b, h, i, j]      = exp(scores - lse)
    out[b, h, i]       = sum_j p[b, h, i, j] v[b, h, j]

Conventions
- causal with Nq != Nk is aligned to the bottom-right corner, as in FlashAttention >= 2.1: query i sees the
  keys j <= i + (Nk - Nq). With Nq > Nk the first Nq - Nk queries see no key at all. causal_prefix = P also
  shows the first P keys to every query (a prefix-LM mask; FlexTok's "causal_last" with Nq == Nk).
- A query that sees no key (all keys masked, or causal with Nq > Nk) gets out = 0, lse = -inf and p = 0
  (FlashAttention's convention; a plain softmax would give NaN).
- Non-finite values (decided once; the CPU and CUDA kernels follow it on every code path):
  * a key is masked when key_mask is False, when it lies beyond the causal limit, or when key_bias is -inf;
    nothing of a masked key is read: NaN / inf in its k row or key_bias never reaches any output.
  * a query row whose scores over its visible keys contain NaN or +inf (NaN or inf in q, in a visible k row or
    in key_bias; inf * 0 in the dot product; scores overflowing to inf) is poisoned: its out row and lse are NaN,
    and its probabilities p are NaN at every visible key (0 at masked keys), so cls_attn / col_sum are NaN
    wherever such a row contributes. A NaN never silently drops a key; -inf scores are an ordinary zero weight.
  * NaN / inf in v reaches out through p * v as IEEE arithmetic gives (0 * NaN = NaN included), as in the
    reference's p @ v; which zero-weight keys a kernel multiplies is not specified.
  * The backward of a poisoned row is NaN / unspecified (not part of the contract).
- Half-precision inputs (fp16/bf16) are computed in fp32 (scores, softmax, p @ v accumulate) and out is rounded
  to the input dtype once. fp32 inputs compute in fp32, fp64 in fp64.
- Side outputs are in fp32 (fp64 for fp64 inputs):
    lse      [B, H, Nq]
    cls_attn [B, H, Nk] = p[:, :, 0, :]  (the attention row of query 0, the CLS token); cls_attn_mean = mean over H
    col_sum  [B, H, Nk] = sum over queries i in [start, end) of p[:, :, i, :] (all queries by default);
             col_sum_mean = mean over H.  Nq == 0 gives cls_attn = 0 and col_sum = 0.
- Packed variable-length sequences (cu_seqlens, int32 [nseq + 1], cu_seqlens[0] = 0, non-decreasing,
  cu_seqlens[-1] = total): q, k, v are [1, H, total, d], key_bias / key_mask are [1, total]; sequence s is the
  tokens cu_seqlens[s]:cu_seqlens[s+1] and attends only within itself. Side outputs are per token: lse per query
  token, cls_attn[..., t] = the attention of the first query of t's sequence to key t, col_sum[..., t] = the
  column sum of key t over its sequence's queries (col_sum_queries is relative to each sequence's start and
  clipped to its length).
"""
import math

import torch

# the result type is shared with the fused op (the computation below is the reference's own)
from ..attention import AttentionOutputs, pack_outputs  # noqa: F401


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dense(q, k, v, key_bias, key_mask, causal, causal_prefix, scale):
    """One batch of dense attention in the accumulation dtype. Returns out (acc), lse, p."""
    acc = _acc_dtype(q.dtype)
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    nq, nk = q.shape[-2], k.shape[-2]
    s = torch.einsum("bhid,bhjd->bhij", qa, ka) * scale
    keep = torch.ones(q.shape[0], 1, nq, nk, dtype=torch.bool, device=q.device)
    if key_bias is not None:
        s = s + key_bias.to(acc)[:, None, None, :]
        keep = keep & (key_bias != float("-inf"))[:, None, None, :]  # a -inf bias masks the key
    if key_mask is not None:
        keep = keep & key_mask[:, None, None, :]
    if causal:
        i = torch.arange(nq, device=q.device)[:, None]
        j = torch.arange(nk, device=q.device)[None, :]
        keep = keep & ((j <= i + (nk - nq)) | (j < causal_prefix))
    s = s.masked_fill(~keep, float("-inf"))
    poisoned = (torch.isnan(s) | (s == float("inf"))).any(dim=-1)  # NaN / +inf among the visible scores
    lse = torch.logsumexp(s, dim=-1)  # -inf for rows without a key
    finite = torch.isfinite(lse)
    p = torch.exp(s - torch.where(finite, lse, torch.zeros_like(lse))[..., None])
    p = torch.where(finite[..., None], p, torch.zeros_like(p))
    p = torch.where(poisoned[..., None] & keep, torch.full_like(p, float("nan")), p)
    lse = torch.where(poisoned, torch.full_like(lse, float("nan")), lse)
    out = torch.einsum("bhij,bhjd->bhid", p, va)
    return out, lse, p


def attention(q, k, v, key_bias=None, key_mask=None, causal=False, scale=None, return_lse=False,
              return_cls_attn=False, return_col_sum=False, col_sum_queries=None, cu_seqlens=None, causal_prefix=0):
    """Reference softmax attention (see the module docstring for every convention).

    q [B, H, Nq, d], k and v [B, H, Nk, d]; key_bias [B, Nk] (float), key_mask [B, Nk] (bool, True = keep).
    Returns out [B, H, Nq, d] (q's dtype) when no side output is requested, else AttentionOutputs.
    """
    d = q.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0
    acc = _acc_dtype(q.dtype)
    start, end = (0, None) if col_sum_queries is None else col_sum_queries
    B, H, Nq, _ = q.shape
    Nk = k.shape[-2]

    if cu_seqlens is None:
        out, lse, p = _dense(q, k, v, key_bias, key_mask, causal, causal_prefix, scale)
        cls = p[:, :, 0, :] if Nq > 0 else torch.zeros(B, H, Nk, dtype=acc, device=q.device)
        e = Nq if end is None else min(end, Nq)
        s0 = min(start, e)
        col = p[:, :, s0:e, :].sum(dim=2)
    else:
        cu = [int(x) for x in cu_seqlens.tolist()]
        out = torch.zeros(B, H, Nq, d, dtype=acc, device=q.device)
        lse = torch.full((B, H, Nq), float("-inf"), dtype=acc, device=q.device)
        cls = torch.zeros(B, H, Nk, dtype=acc, device=q.device)
        col = torch.zeros(B, H, Nk, dtype=acc, device=q.device)
        for a, b in zip(cu[:-1], cu[1:]):
            if b == a:
                continue
            kb = None if key_bias is None else key_bias[:, a:b]
            km = None if key_mask is None else key_mask[:, a:b]
            o_s, l_s, p_s = _dense(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], kb, km, causal, causal_prefix, scale)
            out[:, :, a:b] = o_s
            lse[:, :, a:b] = l_s
            cls[:, :, a:b] = p_s[:, :, 0, :]
            n = b - a
            e = n if end is None else min(end, n)
            s0 = min(start, e)
            col[:, :, a:b] = p_s[:, :, s0:e, :].sum(dim=2)

    out = out.to(q.dtype)
    return pack_outputs(out, lse, cls, col, return_lse, return_cls_attn, return_col_sum)


def attention_probs(q, k, key_bias=None, key_mask=None, causal=False, scale=None, causal_prefix=0):
    """The full probability matrix p [B, H, Nq, Nk] (acc dtype) of dense attention: what eager attention must
    materialize to get the side outputs; used by tests and benchmarks."""
    d = q.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d > 0 else 1.0
    v = torch.zeros_like(k[..., :1])
    return _dense(q, k, v, key_bias, key_mask, causal, causal_prefix, scale)[2]


def cls_attention(q, k, key_bias=None, key_mask=None, scale=None):
    """Reference CLS row: softmax over keys of query 0's scores, per head [B, H, Nk] (acc dtype)."""
    return attention_probs(q[:, :, :1], k, key_bias, key_mask, False, scale)[:, :, 0, :]
