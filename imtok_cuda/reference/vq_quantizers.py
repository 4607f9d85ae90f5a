"""Pure-PyTorch references of the vq quantizers: FSQ, LFQ / BSQ (+ entropy aux loss), Instella binary
quantizer, straight-through quantize with the three loss conventions, usage counts / perplexity, EMA codebook
statistics and update, residual VQ.

This module is the readable specification (see shared/specs/vq.md). It imports nothing from csrc. Functions
named ``anchor_*`` are line-by-line transcriptions of the math of vector-quantize-pytorch 1.32 (the package
is not a dependency); the other functions state the conventions imtok_cuda implements, which differ from the
anchor only where the docstring says so.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "anchor_fsq",
    "anchor_fsq_indices_to_codes",
    "fsq",
    "fsq_indices_to_codes",
    "lfq",
    "lfq_value",
    "anchor_lfq_entropy",
    "lfq_entropy_factorized",
    "binary_quantize",
    "quantize_losses",
    "code_counts",
    "perplexity",
    "ema_stats",
    "ema_update",
    "nearest",
    "residual_vq",
]

# ---- FSQ --------------------------------------------------------------------------------------------------


def _fsq_buffers(levels: Sequence[int], device=None):
    lv = torch.tensor(list(levels), dtype=torch.int32, device=device)
    basis = torch.cumprod(torch.tensor([1] + list(levels[:-1]), device=device), dim=0, dtype=torch.int32)
    return lv, basis


def anchor_fsq(z: torch.Tensor, levels: Sequence[int]):
    """vector-quantize-pytorch 1.32 FSQ.quantize + codes_to_indices (force_quantization_f32: fp16/bf16 are
    upcast to fp32, fp32/fp64 kept). Returns (codes, indices int32); codes in the compute dtype."""
    lv, basis = _fsq_buffers(levels, z.device)
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()
    eps = 1e-3
    half_l = (lv - 1) * (1 + eps) / 2
    offset = torch.where(lv % 2 == 0, 0.5, 0.0)
    shift = (offset / half_l).atanh()
    bounded = (z + shift).tanh() * half_l - offset
    quantized = bounded + (bounded.round() - bounded).detach()  # round_ste
    half_width = lv // 2
    codes = quantized / half_width
    indices = ((codes * half_width + half_width) * basis).sum(dim=-1).to(torch.int32)
    return codes, indices


def anchor_fsq_indices_to_codes(indices: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """vector-quantize-pytorch 1.32 FSQ._indices_to_codes (float32 codes)."""
    lv, basis = _fsq_buffers(levels, indices.device)
    level_indices = (indices[..., None] // basis) % lv
    half_width = lv // 2
    return (level_indices - half_width) / half_width


def fsq(z: torch.Tensor, levels: Sequence[int]):
    """FSQ as imtok_cuda defines it: the anchor's expression, evaluated in fp32 for fp16/bf16/fp32 inputs and
    in fp64 for fp64 inputs (so bf16 keeps every code), straight-through gradient through the bound.
    The index is computed from the integer levels: sum((round(bounded) + L//2) * basis), int32; the anchor's
    float expression (codes * L//2 + L//2) * basis gives the same integers (tested).
    Returns (codes [..., d] float32/float64, indices [...] int32)."""
    codes, _ = anchor_fsq(z, levels)
    lv, basis = _fsq_buffers(levels, z.device)
    half_width = lv // 2
    with torch.no_grad():
        r = (codes * half_width).round().to(torch.int64)
        indices = ((r + half_width) * basis).sum(-1).to(torch.int32)
    return codes, indices


def fsq_indices_to_codes(indices: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    return anchor_fsq_indices_to_codes(indices.long(), levels).float()


# ---- LFQ / BSQ --------------------------------------------------------------------------------------------


def lfq_value(d: int, scale: float = 1.0, spherical: bool = False) -> float:
    """The magnitude of every LFQ code entry: `scale`, or for BSQ the anchor's l2norm(+-scale) * scale."""
    if not spherical:
        return float(scale)
    v = torch.full((d,), float(scale), dtype=torch.float32)
    return float((F.normalize(v, dim=-1) * scale)[0])


def lfq(x: torch.Tensor, scale: float = 1.0, spherical: bool = False):
    """LFQ (MAGVIT-v2) / BSQ quantization with the anchor's conventions: q = +v where x > 0 else -v
    (x == 0 -> -v); BSQ l2-normalizes x (then * scale) first and v = scale / sqrt(d); indices int64 with the
    first dimension as the most significant bit. Straight-through output (x + (q - x).detach(), fp32).
    Returns (quantized, indices, x_used) where x_used is the (normalized) fp32 input the codes came from."""
    x = x.float()
    d = x.shape[-1]
    if spherical:
        x = F.normalize(x, dim=-1) * scale
    v = lfq_value(d, scale, spherical)
    q = torch.where(x > 0, torch.full_like(x, v), torch.full_like(x, -v))
    mask = 2 ** torch.arange(d - 1, -1, -1, device=x.device, dtype=torch.int64)
    indices = ((q > 0).long() * mask).sum(-1)
    return x + (q - x).detach(), indices, x


def _entropy(prob, eps=1e-5):
    return (-prob * prob.clamp(min=eps).log()).sum(dim=-1)


def anchor_lfq_codebook(d: int, scale: float = 1.0, spherical: bool = False, device=None):
    mask = 2 ** torch.arange(d - 1, -1, -1, device=device)
    all_codes = torch.arange(2**d, device=device)
    bits = ((all_codes[..., None].int() & mask) != 0).float()
    codebook = bits * scale * 2 - scale
    if spherical:
        codebook = F.normalize(codebook, dim=-1) * scale
    return codebook


def anchor_lfq_entropy(x: torch.Tensor, inv_temperature: float = 100.0, scale: float = 1.0, spherical: bool = False):
    """vector-quantize-pytorch 1.32 LFQ entropy terms (one codebook, no mask, frac_per_sample_entropy 1):
    materializes the N x 2^d softmax. `x` is the input the codes are computed from (already l2-normalized
    and scaled for BSQ). Returns (per_sample_entropy, codebook_entropy); aux loss = per_sample - gamma * codebook."""
    x = x.float().reshape(-1, x.shape[-1])
    codebook = anchor_lfq_codebook(x.shape[-1], scale, spherical, x.device)
    distance = -2 * torch.einsum("i d, j d -> i j", x, codebook)
    prob = (-distance * inv_temperature).softmax(dim=-1)
    per_sample_entropy = _entropy(prob).mean()
    avg_prob = prob.mean(0)
    codebook_entropy = _entropy(avg_prob).mean()
    return per_sample_entropy, codebook_entropy


def lfq_entropy_factorized(x: torch.Tensor, inv_temperature: float = 100.0, value: float = 1.0):
    """The same two terms from the per-bit factorization: softmax(2 T x.c) over c in {-v, v}^d is a product of
    per-bit Bernoullis with p(bit j = 1) = sigmoid(4 T v x_j). Per-sample entropy = sum of per-bit binary
    entropies (exact, without the anchor's log clamp); codebook distribution built by Kronecker products
    (still N x 2^d here: this is the readable form, the streamed one lives in imtok_cuda.vq.lfq)."""
    x = x.float().reshape(-1, x.shape[-1])
    a = 4.0 * inv_temperature * value * x
    q = torch.sigmoid(a)
    per_bit = -(q * F.logsigmoid(a) + (1 - q) * F.logsigmoid(-a))
    per_sample = per_bit.sum(-1).mean()
    p = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
    for j in range(x.shape[1]):
        p = torch.stack([p * (1 - q[:, j : j + 1]), p * q[:, j : j + 1]], dim=-1).reshape(x.shape[0], -1)
    return per_sample, _entropy(p.mean(0))


# ---- Instella-T2I binary quantizer ------------------------------------------------------------------------


def binary_quantize(z: torch.Tensor, embedding: torch.Tensor | None = None, training: bool = False,
                    temperature: float = 1.0, generator: torch.Generator | None = None):
    """Instella-T2I binary quantizer. Eval: bits = (sigmoid(z) > 0.5) in z's dtype (which differs from z > 0 for
    tiny z in low precision). Train: p = sigmoid(z / T), bits = bernoulli(p) with straight-through p
    (bits + p - p.detach()). Loss mean(p * (1 - p)) (0 in eval). Decode bits @ embedding when given.
    Returns (bits_or_decoded, bits, loss)."""
    if training:
        p = torch.sigmoid(z / temperature)
        hard = torch.bernoulli(p.detach(), generator=generator)
        bits = hard + (p - p.detach())
        loss = (p * (1 - p)).mean()
    else:
        bits = (torch.sigmoid(z) > 0.5).to(z.dtype)
        loss = z.new_zeros(())
    out = bits @ embedding.to(bits.dtype) if embedding is not None else bits
    return out, bits, loss


# ---- nearest code, quantize and losses -------------------------------------------------------------------


def nearest(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """argmin_k of (|x|^2 + |e_k|^2) - 2 x.e_k (l2) or argmax_k x.e_k (cosine); materializes N x K."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    e = codebook.float()
    if metric == "cosine":
        idx = (x2 @ e.t()).argmax(-1)
    else:
        d = (x2 * x2).sum(-1, keepdim=True) + (e * e).sum(-1)[None] - 2 * (x2 @ e.t())
        idx = d.argmin(-1)
    return idx.reshape(x.shape[:-1])


def quantize_losses(z: torch.Tensor, zq: torch.Tensor, convention: str = "llamagen", beta: float = 0.25):
    """Returns (commitment_loss, codebook_loss, total) for z (encoder output) and zq (codebook rows):
    llamagen / titok: codebook mse(zq, z.detach()) + beta * commitment mse(zq.detach(), z), beta 0.25;
    taming (legacy): beta * codebook + commitment; vqtorch (vector-quantize-pytorch): one mse(zq.detach(), z)
    with weight beta (its commitment_weight, default 1), no codebook term (the codebook learns by EMA)."""
    commit = F.mse_loss(zq.detach(), z)
    if convention in ("llamagen", "titok"):
        cb = F.mse_loss(zq, z.detach())
        return commit, cb, cb + beta * commit
    if convention == "taming":
        cb = F.mse_loss(zq, z.detach())
        return commit, cb, beta * cb + commit
    if convention == "vqtorch":
        return commit, z.new_zeros(()), beta * commit
    raise ValueError(f"convention must be 'llamagen', 'titok', 'taming' or 'vqtorch', got {convention!r}")


def code_counts(indices: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount(indices.reshape(-1).long(), minlength=k)


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(H(counts / N)) with 0 log 0 = 0 (the batch's effective number of codes in use)."""
    p = counts.double() / counts.sum().clamp(min=1)
    h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum()
    return h.exp().float()


def ema_stats(x: torch.Tensor, indices: torch.Tensor, k: int, method: str = "index_add"):
    """(counts int64 [K], sums [K, D]) with sums in fp32 (fp64 for fp64 x). 'one_hot' is the anchor's
    einsum(one_hot(idx), x) form (an N x K buffer); 'index_add' is torch's segment sum."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x2 = x.reshape(-1, x.shape[-1]).to(acc)
    idx = indices.reshape(-1).long()
    counts = torch.bincount(idx, minlength=k)
    if method == "one_hot":
        sums = F.one_hot(idx, k).to(acc).t() @ x2
    else:
        sums = torch.zeros(k, x2.shape[1], dtype=acc, device=x.device).index_add_(0, idx, x2)
    return counts, sums


def ema_update(cluster_size, embed_avg, counts, sums, decay: float = 0.8, eps: float = 1e-5):
    """vector-quantize-pytorch EMA step, in place on the buffers; returns the new codebook embed_avg / cs
    with Laplace smoothing cs = (cs + eps) / (sum(cs) + K eps) * sum(cs)."""
    cluster_size.lerp_(counts.to(cluster_size.dtype), 1 - decay)
    embed_avg.lerp_(sums.to(embed_avg.dtype), 1 - decay)
    n = cluster_size.sum(dim=-1, keepdim=True)
    k = cluster_size.shape[-1]
    cs = (cluster_size + eps) / (n + k * eps) * n
    return embed_avg / cs[..., None]


def residual_vq(x: torch.Tensor, codebooks: Sequence[torch.Tensor], metric: str = "l2", beta: float = 0.25):
    """Residual VQ: residual_{l+1} = residual_l - q_l (detached); output the straight-through sum of the q_l;
    indices [..., L]; per-level llamagen losses (codebook + beta * commitment) on each level's residual."""
    residual = x
    total = torch.zeros_like(x)
    idxs, losses = [], []
    for cb in codebooks:
        idx = nearest(residual, cb, metric)
        q = cb[idx]
        _, _, loss = quantize_losses(residual, q, "llamagen", beta)
        losses.append(loss)
        idxs.append(idx)
        total = total + q
        residual = residual - q.detach()
    out = x + (total - x).detach()
    return out, torch.stack(idxs, -1), torch.stack(losses)
