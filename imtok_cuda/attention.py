"""Fused softmax attention with key bias, key keep-mask, causal masking, packed sequences and side outputs.

What token-reduction methods need from attention and SDPA / FlashAttention do not give:
- an additive per-key bias (ToMe proportional attention: log(size); GTP: log(token_scales)),
- a key keep mask [B, N] (pruned tokens) or packed variable-length sequences (cu_seqlens),
- the CLS query's attention row (EViT, FasterVLM), per head and head-mean,
- per-key column sums of the attention over all queries or a query range (GTP-ViT, FastV, TransPrune),
computed from the softmax LSE without materializing the Nq x Nk probabilities:
    p_0j = exp(scale q_0 . k_j + bias_j - lse_0),   col_j = sum_i exp(scale q_i . k_j + bias_j - lse_i).

Functions
- attention(q, k, v, ...)                    out, or AttentionOutputs when a side output is requested
- attention_with_side_outputs(q, k, v, ...)  always AttentionOutputs (CLS row and column sums by default)
- cls_attention(q, k, ...)                   the CLS row alone [B, H, Nk] (per-head GEMV + softmax, no output)

Conventions (identical to imtok_cuda.reference.attention, the specification):
- q [B, H, Nq, d], k and v [B, H, Nk, d] (d <= 128), any strides; fp16 / bf16 / fp32 / fp64; half inputs are
  computed with fp32 accumulation and out is rounded once. On a CUDA device (sm_80+) fp16 / bf16 run on
  tensor cores, which round the probabilities P (and dS in the backward) to the input type before their
  products, as FlashAttention does: |out - fp32 math| <= u max|v| + 1 ulp (u = 2^-11 fp16, 2^-8 bf16); lse and
  the side outputs stay fp32. key_bias [B, Nk] float (any float dtype), key_mask [B, Nk] bool, True = keep.
- causal with Nq != Nk is aligned to the bottom-right (FlashAttention >= 2.1): query i sees keys
  j <= i + Nk - Nq. causal_prefix=P (with causal) also shows the first P keys to every query: a prefix-LM mask;
  with Nq == Nk it is FlexTok's "causal_last" (the first P tokens attend to one another, token i >= P to every
  key j <= i), in one call and without an Nq x Nk mask; blocks of keys a query cannot see are skipped.
- A query that sees no key (all masked) gets out = 0, lse = -inf, probabilities 0 (no NaN).
- Non-finite data, the same on every path (CPU row and blocked paths, CUDA SIMT and tensor-core kernels, the
  reference): a key is masked when key_mask is False, beyond the causal limit or when key_bias is -inf, and
  nothing of a masked key is read. A query whose scores over its visible keys contain NaN or +inf (NaN / inf
  in q, in a visible key row or key_bias) gets out = NaN and lse = NaN, and its probabilities are NaN at its
  visible keys, so cls_attn / col_sum are NaN where it contributes: a NaN never silently drops a key. NaN / inf
  in v propagate through p * v. The backward of such a row is not specified (NaN in practice). Non-finite
  parameters are errors: scale must be finite.
- lse [B, H, Nq], cls_attn / col_sum [B, H, Nk] and their head means [B, Nk] are float32 (float64 for
  float64 inputs).
- Packed sequences: q, k, v [1, H, total, d], cu_seqlens int32 [nseq + 1] (0, ..., total, non-decreasing);
  each sequence attends within itself; side outputs are per token (see the reference docstring).
- Gradients flow to q, k, v, key_bias through out and lse; cls_attn and col_sum are not differentiable (they
  are scores for choosing tokens). The backward is deterministic (no atomics).
"""
import math
from collections import namedtuple

import torch

from . import _loader  # noqa: F401  (loads the kernels)
from ._args import as_bool, as_float, as_int, fcheck, fcheck_dim, fcheck_dtype, fcheck_floating
from ._register import register_autograd, register_fake

__all__ = ["attention", "attention_with_side_outputs", "cls_attention", "AttentionOutputs", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = _loader.LIMITS["max_head_dim"]

AttentionOutputs = namedtuple(
    "AttentionOutputs", ["out", "lse", "cls_attn", "cls_attn_mean", "col_sum", "col_sum_mean"]
)
AttentionOutputs.__doc__ = """Output of attention with side outputs; fields not requested are None."""


def pack_outputs(out, lse, cls_attn, col_sum, return_lse, return_cls_attn, return_col_sum):
    """What attention() returns (also the reference's): out alone when no side output is requested, else
    AttentionOutputs with the requested fields and their means over heads."""
    if not (return_lse or return_cls_attn or return_col_sum):
        return out
    return AttentionOutputs(
        out,
        lse if return_lse else None,
        cls_attn if return_cls_attn else None,
        cls_attn.mean(dim=1) if return_cls_attn else None,
        col_sum if return_col_sum else None,
        col_sum.mean(dim=1) if return_col_sum else None,
    )

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(q, k, v, key_bias, key_mask, cu_seqlens):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions [B, H, N, d], got shape {tuple(t.shape)}")
        if t.dtype not in _FLOATS:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on the same device, got {q.device}, {k.device}, {v.device}")
    B, H, _, d = q.shape
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != d:
        raise ValueError(f"k must have shape [B={B}, H={H}, Nk, d={d}], got {tuple(k.shape)}")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"q.shape[3] (head dim d) must be in [1, {MAX_HEAD_DIM}], got {d}")
    Nk = k.shape[2]
    if key_bias is not None:
        if not isinstance(key_bias, torch.Tensor) or key_bias.dtype not in _FLOATS:
            raise TypeError("key_bias must be a floating-point tensor")
        if tuple(key_bias.shape) != (B, Nk):
            raise ValueError(f"key_bias must have shape [B={B}, Nk={Nk}], got {tuple(key_bias.shape)}")
        if key_bias.device != q.device:
            raise ValueError(f"key_bias must be on {q.device}, got {key_bias.device}")
    if key_mask is not None:
        if not isinstance(key_mask, torch.Tensor) or key_mask.dtype != torch.bool:
            raise TypeError(f"key_mask must be a bool tensor (True = keep), got {getattr(key_mask, 'dtype', None)}")
        if tuple(key_mask.shape) != (B, Nk):
            raise ValueError(f"key_mask must have shape [B={B}, Nk={Nk}], got {tuple(key_mask.shape)}")
        if key_mask.device != q.device:
            raise ValueError(f"key_mask must be on {q.device}, got {key_mask.device}")
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1:
            raise TypeError("cu_seqlens must be a 1-D int32 tensor [nseq + 1]")
        if B != 1 or q.shape[2] != Nk:
            raise ValueError(
                f"with cu_seqlens, q, k and v must be packed as [1, H, total, d], got q {tuple(q.shape)}, "
                f"k {tuple(k.shape)}"
            )


def _check_prefix(causal, causal_prefix):
    causal_prefix = as_int(causal_prefix, "causal_prefix")
    if causal_prefix < 0:
        raise ValueError(f"causal_prefix must be >= 0, got {causal_prefix}")
    if causal_prefix and not causal:
        raise ValueError(f"causal_prefix needs causal=True (it widens the causal mask), got causal_prefix "
                         f"{causal_prefix} with causal=False")
    return causal_prefix


def _col_args(col_sum_queries):
    if col_sum_queries is None:
        return 0, -1
    start, end = col_sum_queries
    start = 0 if start is None else as_int(start, "col_sum_queries[0]")
    end = -1 if end is None else as_int(end, "col_sum_queries[1]")
    if start < 0 or end < -1:
        raise ValueError(f"col_sum_queries must be (start >= 0, end >= 0 or None), got {col_sum_queries}")
    return start, end


def attention(
    q,
    k,
    v,
    key_bias=None,
    key_mask=None,
    causal=False,
    scale=None,
    return_lse=False,
    return_cls_attn=False,
    return_col_sum=False,
    col_sum_queries=None,
    cu_seqlens=None,
    causal_prefix=0,
):
    """Softmax attention softmax(scale q k^T + key_bias, masked) v without the Nq x Nk matrix.

    Args:
        q, k, v: [B, H, Nq, d], [B, H, Nk, d], [B, H, Nk, d].
        key_bias: optional [B, Nk] additive per-key bias (e.g. log token sizes for proportional attention).
        key_mask: optional [B, Nk] bool, True = the key takes part.
        causal: bottom-right aligned causal mask.
        causal_prefix: with causal, the number of leading keys every query sees (prefix-LM mask; 0 = plain causal).
        scale: score scale, default 1 / sqrt(d).
        return_lse / return_cls_attn / return_col_sum: request side outputs.
        col_sum_queries: (start, end) query range of the column sums (end None = all; per sequence when packed).
        cu_seqlens: int32 [nseq + 1] for packed sequences.
    Returns:
        out [B, H, Nq, d] in q's dtype if no side output is requested, else AttentionOutputs(out, lse, cls_attn,
        cls_attn_mean, col_sum, col_sum_mean) with None for what was not requested.
    """
    _check(q, k, v, key_bias, key_mask, cu_seqlens)
    start, end = _col_args(col_sum_queries)
    if scale is not None:
        scale = as_float(scale, "scale")
    causal = as_bool(causal, "causal")
    causal_prefix = _check_prefix(causal, causal_prefix)
    out, lse, cls, col = torch.ops.imtok_cuda.attention_forward(
        q, k, v, key_bias, key_mask, causal, scale, as_bool(return_cls_attn, "return_cls_attn"),
        as_bool(return_col_sum, "return_col_sum"), start, end, cu_seqlens, causal_prefix,
    )
    return pack_outputs(out, lse, cls, col, return_lse, return_cls_attn, return_col_sum)


def attention_with_side_outputs(q, k, v, key_bias=None, key_mask=None, causal=False, scale=None, cls_attn=True,
                                col_sum=True, lse=True, col_sum_queries=None, cu_seqlens=None, causal_prefix=0):
    """attention() that always returns AttentionOutputs; by default with lse, the CLS row (per head and head
    mean) and the column sums (per head and head mean). This is the hook token-reduction modules call in place
    of `softmax(q k^T) v` + probability post-processing: one pass, O(N d) extra memory."""
    res = attention(
        q, k, v, key_bias, key_mask, causal, scale, return_lse=lse, return_cls_attn=cls_attn,
        return_col_sum=col_sum, col_sum_queries=col_sum_queries, cu_seqlens=cu_seqlens, causal_prefix=causal_prefix,
    )
    if isinstance(res, torch.Tensor):
        return AttentionOutputs(res, None, None, None, None, None)
    return res


def cls_attention(q, k, key_bias=None, key_mask=None, scale=None):
    """The CLS row alone: softmax over keys of query 0's scores, per head, [B, H, Nk] float32 (float64 for
    float64 inputs). A per-head GEMV + softmax (O(H Nk d) work, no attention output); differentiable through
    plain PyTorch ops. Use it when only the EViT / FasterVLM CLS scores are needed (e.g. before the block runs
    its own attention). A CLS query whose keys are all masked gets a row of zeros."""
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor):
        raise TypeError("q and k must be tensors")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must have 4 dimensions [B, H, N, d], got {tuple(q.shape)} and {tuple(k.shape)}")
    _check(q, k, k, key_bias, key_mask, None)
    if q.shape[2] < 1:
        raise ValueError("q must have at least one query (the CLS token) along dim 2")
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.einsum("bhd,bhjd->bhj", q[:, :, 0].to(acc), k.to(acc)) * scale
    if key_bias is not None:
        s = s + key_bias.to(acc)[:, None, :]
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, :], float("-inf"))
        p = torch.softmax(s, dim=-1)
        return torch.where(key_mask[:, None, :].any(-1, keepdim=True), p, torch.zeros_like(p))
    return torch.softmax(s, dim=-1)


# ---- fake (meta) kernels -------------------------------------------------------------------------------------
def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_problem(q, k, v, key_bias, key_mask, causal, causal_prefix, scale, cu_seqlens):
    """csrc/attention/attention_common.h check_problem restated (shapes and dtypes; cu_seqlens values are checked
    by the kernels' launchers)."""
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        fcheck_dim(t, 4, n)
    fcheck_floating(q, "q")
    for t, n in ((k, "k"), (v, "v")):
        torch._check_type(t.dtype == q.dtype, lambda: "q and %s must have the same dtype, got %s and %s" % (
            n, q.dtype, t.dtype))
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    for t, n, want in ((k, "k", (B, H, Nk, d)), (v, "v", (B, H, Nk, d))):
        for i in range(4):
            fcheck(t.shape[i] == want[i], lambda: "%s.shape[%d] must be %s, got shape %s" % (
                n, i, want[i], tuple(t.shape)))
    fcheck(1 <= d <= MAX_HEAD_DIM, lambda: "q.shape[3] (head dim d) must be in [1, %d], got %s" % (MAX_HEAD_DIM, d))
    if key_bias is not None:
        fcheck_dim(key_bias, 2, "key_bias")
        fcheck_floating(key_bias, "key_bias")
        fcheck(key_bias.shape[0] == B, lambda: "key_bias.shape[0] must be %s, got shape %s" % (B, tuple(key_bias.shape)))
        fcheck(key_bias.shape[1] == Nk, lambda: "key_bias.shape[1] must be %s, got shape %s" % (Nk, tuple(key_bias.shape)))
    if key_mask is not None:
        fcheck_dim(key_mask, 2, "key_mask")
        fcheck_dtype(key_mask, torch.bool, "key_mask")
        fcheck(key_mask.shape[0] == B, lambda: "key_mask.shape[0] must be %s, got shape %s" % (B, tuple(key_mask.shape)))
        fcheck(key_mask.shape[1] == Nk, lambda: "key_mask.shape[1] must be %s, got shape %s" % (Nk, tuple(key_mask.shape)))
    fcheck(causal_prefix >= 0, lambda: "causal_prefix must be >= 0, got %s" % causal_prefix)
    fcheck(causal or causal_prefix == 0, "causal_prefix needs causal=True (it widens the causal mask)")
    if scale is not None:
        fcheck(math.isfinite(scale), lambda: "scale must be finite, got %s" % scale)
    if cu_seqlens is not None:
        fcheck_dim(cu_seqlens, 1, "cu_seqlens")
        fcheck_dtype(cu_seqlens, torch.int32, "cu_seqlens")
        fcheck(cu_seqlens.shape[0] >= 2, "cu_seqlens must have at least 2 entries")
        fcheck(B == 1, "with cu_seqlens, q, k and v must be packed as [1, H, total, d]")
        fcheck(Nq == Nk, "with cu_seqlens, q and k must have the same number of tokens")


@register_fake("attention_forward")
def _forward_fake(q, k, v, key_bias=None, key_mask=None, causal=False, scale=None, return_cls_attn=False,
                  return_col_sum=False, col_sum_start=0, col_sum_end=-1, cu_seqlens=None, causal_prefix=0):
    _fake_problem(q, k, v, key_bias, key_mask, causal, causal_prefix, scale, cu_seqlens)
    fcheck(col_sum_start >= 0, lambda: "col_sum_start must be >= 0, got %s" % col_sum_start)
    fcheck(col_sum_end >= -1, lambda: "col_sum_end must be >= 0 (or -1 for all queries), got %s" % col_sum_end)
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    acc = _acc(q.dtype)
    out = q.new_empty((B, H, Nq, d))
    lse = q.new_empty((B, H, Nq), dtype=acc)
    cls = q.new_empty((B, H, Nk) if return_cls_attn else (0,), dtype=acc)
    col = q.new_empty((B, H, Nk) if return_col_sum else (0,), dtype=acc)
    return out, lse, cls, col


@register_fake("attention_backward")
def _backward_fake(grad_out, grad_lse, q, k, v, out, lse, key_bias=None, key_mask=None, causal=False, scale=None,
                   cu_seqlens=None, need_bias_grad=False, causal_prefix=0):
    _fake_problem(q, k, v, key_bias, key_mask, causal, causal_prefix, scale, cu_seqlens)
    fcheck(tuple(grad_out.shape) == tuple(q.shape), lambda: "grad_out must have the shape of q")
    fcheck(tuple(out.shape) == tuple(q.shape), lambda: "out must have the shape of q")
    fcheck(not need_bias_grad or key_bias is not None, "need_bias_grad requires key_bias")
    dbias = key_bias.new_empty(key_bias.shape) if need_bias_grad else q.new_empty((0,))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias


# ---- autograd --------------------------------------------------------------------------------------------------
def _setup(ctx, inputs, output):
    q, k, v, key_bias, key_mask, causal, scale, _, _, _, _, cu_seqlens, causal_prefix = inputs
    out, lse, cls, col = output
    ctx.mark_non_differentiable(cls, col)
    ctx.causal = causal
    ctx.causal_prefix = causal_prefix
    ctx.scale = scale
    ctx.has_bias = key_bias is not None
    ctx.has_mask = key_mask is not None
    ctx.has_cu = cu_seqlens is not None
    ctx.save_for_backward(q, k, v, out, lse, key_bias, key_mask, cu_seqlens)


def _backward(ops, ctx, grad_out, grad_lse, grad_cls, grad_col):
    q, k, v, out, lse, key_bias, key_mask, cu_seqlens = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    need_bias = ctx.has_bias and ctx.needs_input_grad[3]
    dq, dk, dv, dbias = ops.attention_backward(
        grad_out, grad_lse, q, k, v, out, lse,
        key_bias if ctx.has_bias else None, key_mask if ctx.has_mask else None, ctx.causal, ctx.scale,
        cu_seqlens if ctx.has_cu else None, need_bias, ctx.causal_prefix,
    )
    return (dq, dk, dv, dbias if need_bias else None) + (None,) * 9


register_autograd("attention_forward", _backward, _setup)
