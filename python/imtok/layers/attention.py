"""Multi-head attention for every model and token-reduction patch of imtok.

One function, `attention(q, k, v, ...)`, picks the implementation:
  * inside `imtok.use_reference()`: imtok_cuda.reference.attention (explicit softmax, the specification);
  * when a key bias, key mask, packed sequences (cu_seqlens) or a side output (LSE, CLS row, column sums) is
    asked for: the fused op imtok_cuda.attention. SDPA has no packed sequences and no side outputs, and for a
    key bias that needs a gradient it falls back to its math path, which holds the N x N matrix (torch 2.14).
    A key mask, or a bias without gradient, SDPA's CPU kernel takes as a broadcast [B, 1, 1, Nk] mask without
    that matrix, at the fused op's speed (B=8, H=12, N=1024); they stay on the fused op, whose masking is the
    same on every device (a query with no visible key gives 0);
  * otherwise torch's scaled_dot_product_attention. Measured on the busy 2-vCPU dev VM at ViT-B/16 shapes
    (B=8 and 64, H=12, N=197, d=64, fp32, one thread, interleaved, CPU time): the fused op gives the output
    alone at 1.00x of SDPA's speed and forward+backward at 1.01-1.06x (0.8x before its one-pass backward), so
    on a CPU neither choice loses; on a GPU SDPA runs FlashAttention, so plain calls go to SDPA.
    SDPA's causal mask is top-left aligned, ours bottom-right (FlashAttention >= 2.1): with Nq != Nk (decoding
    from a KV cache) a causal call goes to the fused op.

`self_attention(module, x, ...)` is the one qkv -> attention -> proj forward: `Attention` runs on it, and so do
the token-reduction patches on timm's and Hugging Face's attention modules (same names), asking it for exactly
the side outputs they use (keys, queries, LSE, CLS row, column sums; head means or per head).
`Attention` is the module: timm's parameter names (qkv, proj, num_heads, head_dim, scale), optional q/k norms,
an optional rotary embedding applied to q and k, and a KV cache for decoding.
"""
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

import imtok_cuda
from imtok_cuda.reference import attention as _reference

from .switch import reference_enabled

__all__ = ["attention", "self_attention", "Attention", "AttentionSideOutputs", "KVCache"]


def attention(q, k, v, *, key_bias=None, key_mask=None, causal=False, scale=None, cu_seqlens=None,
              return_lse=False, return_cls_attn=False, return_col_sum=False, col_sum_queries=None,
              causal_prefix=0):
    """softmax(scale q k^T + key_bias, masked) v for q [B, H, Nq, d], k and v [B, H, Nk, d].

    Same conventions and return values as imtok_cuda.attention.attention (out, or AttentionOutputs when a side
    output is requested): key_mask [B, Nk] bool True = keep, causal bottom-right aligned, a query with no
    visible key gets out = 0. causal_prefix=P (with causal): every query also sees the first P keys, a prefix-LM
    mask (FlexTok's "causal_last" when Nq == Nk: the first P tokens attend to one another, token i >= P to every
    key j <= i); one fused call, no Nq x Nk mask."""
    side = return_lse or return_cls_attn or return_col_sum
    kwargs = dict(key_bias=key_bias, key_mask=key_mask, causal=causal, scale=scale, return_lse=return_lse,
                  return_cls_attn=return_cls_attn, return_col_sum=return_col_sum,
                  col_sum_queries=col_sum_queries, cu_seqlens=cu_seqlens, causal_prefix=causal_prefix)
    if reference_enabled():
        return _reference.attention(q, k, v, **kwargs)
    plain = key_bias is None and key_mask is None and cu_seqlens is None and not side and not causal_prefix
    if plain and (not causal or q.shape[2] == k.shape[2]) and q.shape[2] > 0 and k.shape[2] > 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal), scale=scale)
    return imtok_cuda.attention.attention(q, k, v, **kwargs)


class KVCache:
    """Keys and values of the tokens decoded so far, preallocated [B, H, max_len, d] per layer.

    `append(k, v)` writes the new tokens at the current length and returns views of everything cached; the
    caller advances nothing by hand. `reset()` empties the cache (the buffers stay)."""

    def __init__(self, batch_size: int, num_heads: int, max_len: int, head_dim: int, dtype=torch.float32,
                 device=None):
        shape = (batch_size, num_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def reset(self):
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor):
        n = k.shape[2]
        if self.length + n > self.max_len:
            raise ValueError(f"KVCache holds at most {self.max_len} tokens; {self.length} cached + {n} new")
        self.k[:, :, self.length:self.length + n] = k
        self.v[:, :, self.length:self.length + n] = v
        self.length += n
        return self.k[:, :, :self.length], self.v[:, :, :self.length]


class AttentionSideOutputs(NamedTuple):
    out: torch.Tensor
    lse: Optional[torch.Tensor]
    cls_attn: Optional[torch.Tensor]
    col_sum: Optional[torch.Tensor]
    keys: torch.Tensor


SIDE_OUTPUTS = ("q", "k", "lse", "cls_attn", "cls_attn_heads", "col_sum", "col_sum_heads")


def self_attention(module: nn.Module, x: torch.Tensor, *, key_bias=None, key_mask=None, causal=False,
                   cu_seqlens=None, rope=None, kv_cache=None, need=(), causal_prefix=0):
    """The qkv -> attention -> proj forward of any attention module with timm's or Hugging Face's names.

    This is the one place where a model's (or a patched third-party model's) self-attention runs:
    imtok.layers.Attention, timm's Attention (token-reduction patches) and transformers' CLIPAttention all come
    here, so every one of them follows the reference switch and gets the side outputs from the fused op.
      projections: `qkv` (one Linear, timm) or `q_proj` / `k_proj` / `v_proj` (Hugging Face), then `proj` or
                   `out_proj`; `num_heads`, `head_dim`, `scale`; optional `q_norm` / `k_norm` (per head),
                   `norm` (timm's scale_norm, on the attention output), `gate` (timm's gated attention),
                   `proj_drop`. Attention dropout is not supported (the fused op has none): a module in training
                   mode with a nonzero `attn_drop` / `dropout` raises.
    need: names from SIDE_OUTPUTS to return besides the output: "q", "k" ([B, H, N, d] after norms and rope;
          "k" includes the cached keys), "lse" [B, H, N], "cls_attn" / "col_sum" (head means, [B, Nk]),
          "cls_attn_heads" / "col_sum_heads" ([B, H, Nk]); side outputs are fp32 (fp64 for fp64 inputs).
    Returns out [B, N, C_out], or (out, {name: tensor}) when `need` is not empty."""
    unknown = set(need) - set(SIDE_OUTPUTS)
    if unknown:
        raise ValueError(f"unknown side outputs {sorted(unknown)}; choose from {SIDE_OUTPUTS}")
    drop = getattr(module, "attn_drop", None)
    p_drop = drop.p if isinstance(drop, nn.Dropout) else float(getattr(module, "dropout", 0.0) or 0.0)
    if module.training and p_drop > 0:
        raise NotImplementedError("attention dropout is not supported by imtok attention; set it to 0")
    B, N, _ = x.shape
    H, d = module.num_heads, module.head_dim
    if hasattr(module, "qkv"):
        q, k, v = module.qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (proj(x).reshape(B, N, H, d).transpose(1, 2)
                   for proj in (module.q_proj, module.k_proj, module.v_proj))
    q_norm, k_norm = getattr(module, "q_norm", None), getattr(module, "k_norm", None)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    if rope is not None:
        q, k = rope(q, k)
    if kv_cache is not None:
        k, v = kv_cache.append(k, v)
    need = set(need)
    want_lse = "lse" in need
    want_cls = bool(need & {"cls_attn", "cls_attn_heads"})
    want_col = bool(need & {"col_sum", "col_sum_heads"})
    res = attention(q, k, v, key_bias=key_bias, key_mask=key_mask, causal=causal, scale=module.scale,
                    cu_seqlens=cu_seqlens, return_lse=want_lse, return_cls_attn=want_cls, return_col_sum=want_col,
                    causal_prefix=causal_prefix)
    side = want_lse or want_cls or want_col
    out = (res.out if side else res).transpose(1, 2).reshape(B, N, H * d)
    norm = getattr(module, "norm", None)
    if norm is not None:
        out = norm(out)
    gate = getattr(module, "gate", None)
    if gate is not None:
        out = out * gate(x).sigmoid()
    out = module.proj(out) if hasattr(module, "proj") else module.out_proj(out)
    proj_drop = getattr(module, "proj_drop", None)
    if proj_drop is not None:
        out = proj_drop(out)
    if not need:
        return out
    available = {"q": q, "k": k}
    if side:
        available.update(lse=res.lse, cls_attn=res.cls_attn_mean, cls_attn_heads=res.cls_attn,
                         col_sum=res.col_sum_mean, col_sum_heads=res.col_sum)
    return out, {name: available[name] for name in need}


class Attention(nn.Module):
    """Multi-head self-attention with timm's names (qkv, proj, num_heads, head_dim, scale).

    forward(x [B, N, C], key_bias=None, key_mask=None, causal=False, cu_seqlens=None, rope=None, kv_cache=None,
            side_outputs=False, causal_prefix=0)
    causal=True, causal_prefix=P: prefix-LM mask (FlexTok's causal_last), see `attention`.
    rope: a callable (q, k) -> (q, k) applied after the projection (e.g. 2D rotary embedding with positions).
    kv_cache: a KVCache; the new keys/values are appended and attention runs over everything cached
              (causal then aligns the new queries with the last keys).
    side_outputs=True returns AttentionSideOutputs(out, lse, cls_attn (head-mean), col_sum (head-mean), keys)
    for token reduction (keys [B, H, N, d] give ToMe's metric). For a chosen subset (per-head sums, queries,
    nothing costly that is not used) call self_attention(layer, x, need=...)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 qk_norm: Optional[Callable[[int], nn.Module]] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = qk_norm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = qk_norm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x, key_bias=None, key_mask=None, causal=False, cu_seqlens=None, rope=None, kv_cache=None,
                side_outputs=False, causal_prefix=0):
        need = ("lse", "cls_attn", "col_sum", "k") if side_outputs else ()
        res = self_attention(self, x, key_bias=key_bias, key_mask=key_mask, causal=causal, cu_seqlens=cu_seqlens,
                             rope=rope, kv_cache=kv_cache, need=need, causal_prefix=causal_prefix)
        if not side_outputs:
            return res
        out, side = res
        return AttentionSideOutputs(out, side["lse"], side["cls_attn"], side["col_sum"], side["k"])
