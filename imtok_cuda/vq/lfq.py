"""Lookup-free quantization (MAGVIT-v2 LFQ) and binary spherical quantization (BSQ) with
vector-quantize-pytorch 1.32's conventions, and its entropy aux loss without the N x 2^d buffer.

    q, indices = lfq_quantize(x, scale=1.0, spherical=False)
    per_sample_entropy, codebook_entropy = lfq_entropy(x_used, inv_temperature=100.0, value=v)
    aux = per_sample_entropy - diversity_gamma * codebook_entropy

q = +v where x > 0 else -v (x == 0 -> -v), v = scale (LFQ) or scale / sqrt(d) after l2-normalizing x and
multiplying by scale (BSQ); indices int64, first dimension = most significant bit; straight-through output in
fp32 (the anchor forces fp32 too).

Entropy: softmax(2 T x.c) over the 2^d codes c in {-v, v}^d factorizes into per-bit Bernoullis,
p(bit j = 1) = sigmoid(4 T v x_j); split the bits into a high and a low half, p = P_hi (x) P_lo with 2^(d/2)
columns each. Codebook (batch-average) distribution: accumulated over row tiles as P_hi^T @ P_lo (a GEMM), so
memory is O(tile * 2^(d/2) + 2^d) instead of N x 2^d; its backward recomputes the tiles. Per-sample entropy
with the anchor's log clamp (1e-5): for each high half, the low halves whose product falls below the clamp
are a prefix of P_lo sorted ascending, so prefix sums give the clamped sum in O(N 2^(d/2) d); clamp=False
gives the exact entropy (the sum of per-bit binary entropies, O(N d)), which differs from the anchor's value
where many codes have p < 1e-5 (e.g. diffuse inputs at d >= 17, where every p is below it).
Both terms equal the anchor's materialized values to fp32 rounding (tested).
Probabilities below 1e-18 are flushed to 0 (keeps fp32 products out of denormals; changes nothing visible).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._args import as_bool, as_float, as_int, fcheck, fcheck_floating
from .._register import register_fake
from ._qcommon import check_float

__all__ = ["lfq_quantize", "lfq_value", "lfq_entropy", "lfq_per_sample_entropy", "lfq_codebook_entropy"]

_ops = torch.ops.imtok_cuda


def lfq_value(d: int, scale: float = 1.0, spherical: bool = False) -> float:
    """|code entry|: scale for LFQ; for BSQ the anchor's l2norm(full(d, scale)) * scale, in fp32."""
    scale = as_float(scale, "scale")
    if not spherical:
        return scale
    v = torch.full((d,), scale, dtype=torch.float32)
    return float((F.normalize(v, dim=-1) * scale)[0])


def lfq_quantize(x: torch.Tensor, scale: float = 1.0, spherical: bool = False):
    """Returns (quantized [..., d] fp32 straight-through, indices [...] int64, x_used fp32), x_used being
    the input the codes are taken from (l2-normalized * scale for BSQ), which the entropy loss uses."""
    check_float(x, "x")
    scale, spherical = as_float(scale, "scale"), as_bool(spherical, "spherical")
    if x.dim() < 1 or not 1 <= x.shape[-1] <= 62:
        raise ValueError(f"x.shape[-1] (bits per code) must be in [1, 62], got shape {tuple(x.shape)}")
    xf = x.float()
    if spherical:
        xf = F.normalize(xf, dim=-1) * scale
    v = lfq_value(x.shape[-1], scale, spherical)
    q, indices = _ops.vq_lfq(xf.detach(), v)
    return xf + (q - xf).detach(), indices, xf


@register_fake("vq_lfq")
def _lfq_fake(x, value=1.0):
    fcheck(math.isfinite(value), lambda: "value must be finite, got %s" % value)
    fcheck_floating(x, "x")
    fcheck(x.dim() >= 1 and 1 <= x.shape[-1] <= 62, lambda: "x.shape[-1] (bits per code) must be in [1, 62], got "
           "shape %s" % (tuple(x.shape),))
    return x.new_empty(x.shape, dtype=torch.float32), x.new_empty(x.shape[:-1], dtype=torch.int64)


# Probabilities below this are set to 0: products of two kept values stay normal fp32 numbers (denormal
# arithmetic is ~100x slower on CPUs), and a code's mass below 1e-18 changes the clamped entropy by < 1e-17.
_TINY = 1e-18


def _flush(t: torch.Tensor) -> torch.Tensor:
    return t.masked_fill(t < _TINY, 0.0)


def _kron_probs(a: torch.Tensor) -> torch.Tensor:
    """a [n, m] per-bit logits -> [n, 2^m] joint probabilities, first column = most significant bit."""
    n, m = a.shape
    p1, p0 = _flush(torch.sigmoid(a)), _flush(torch.sigmoid(-a))
    pb = torch.stack([p0, p1], dim=-1)  # [n, m, 2]
    P = a.new_ones(n, 1)
    for j in range(m):
        P = _flush((P[:, :, None] * pb[:, j, None, :]).reshape(n, -1))
    return P


def _bits(m: int, device) -> torch.Tensor:
    mask = 2 ** torch.arange(m - 1, -1, -1, device=device)
    return ((torch.arange(2**m, device=device)[:, None] & mask) != 0).float()


class _CodebookEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a_scale, eps, tile):
        n, d = x.shape
        h = d // 2
        avg = x.new_zeros(2**h, 2 ** (d - h))
        for s in range(0, n, tile):
            a = x[s : s + tile] * a_scale
            avg += _kron_probs(a[:, :h]).t() @ _kron_probs(a[:, h:])
        avg /= max(n, 1)
        ent = -(avg * avg.clamp(min=eps).log()).sum()
        ctx.save_for_backward(x, avg)
        ctx.a_scale, ctx.eps, ctx.tile = a_scale, eps, tile
        return ent

    @staticmethod
    def backward(ctx, g):
        x, avg = ctx.saved_tensors
        a_scale, eps, tile = ctx.a_scale, ctx.eps, ctx.tile
        n, d = x.shape
        h = d // 2
        # d/da of -a log(max(a, eps)): -(log a + 1) where a >= eps (torch's clamp passes the gradient there)
        dh = torch.where(avg >= eps, -(avg.clamp(min=eps).log() + 1), torch.full_like(avg, -math.log(eps)))
        G = dh * (g / max(n, 1))
        b_hi, b_lo = _bits(h, x.device), _bits(d - h, x.device)
        dx = torch.empty_like(x)
        for s in range(0, n, tile):
            a = x[s : s + tile] * a_scale
            ph, pl = _kron_probs(a[:, :h]), _kron_probs(a[:, h:])
            rh = (pl @ G.t()) * ph
            rl = (ph @ G) * pl
            da_h = rh @ b_hi - torch.sigmoid(a[:, :h]) * rh.sum(-1, keepdim=True)
            da_l = rl @ b_lo - torch.sigmoid(a[:, h:]) * rl.sum(-1, keepdim=True)
            dx[s : s + tile] = torch.cat([da_h, da_l], dim=-1) * a_scale
        return dx, None, None, None


def _clamped_per_sample_sum(x2: torch.Tensor, a_scale: float, eps: float, tile: int) -> torch.Tensor:
    """sum over rows of -sum_c p_c log(max(p_c, eps)) with p = P_hi (x) P_lo, without the 2^d grid: for each
    high half h, the low halves l with P_lo < eps / P_hi[h] are a prefix of P_lo sorted ascending, so with
    prefix sums of P_lo and P_lo log P_lo the inner sum over l is three gathers. O(rows 2^(d/2) d)."""
    n, d = x2.shape
    h = d // 2
    log_eps = math.log(eps)
    total = x2.new_zeros(())
    for s in range(0, n, tile):
        a = x2[s : s + tile] * a_scale
        ph = _kron_probs(a[:, :h])
        pl, _ = _kron_probs(a[:, h:]).sort(dim=-1)
        zero = pl.new_zeros(pl.shape[0], 1)
        s1 = torch.cat([zero, pl.cumsum(-1)], dim=-1)
        s2 = torch.cat([zero, torch.special.xlogy(pl, pl).cumsum(-1)], dim=-1)
        alive = ph > 0
        thr = torch.where(alive, eps / torch.where(alive, ph, torch.ones_like(ph)), torch.full_like(ph, math.inf))
        c = torch.searchsorted(pl.detach().contiguous(), thr.detach().contiguous(), side="left")
        low = s1.gather(1, c)
        high = s1[:, -1:] - low
        high_plogp = s2[:, -1:] - s2.gather(1, c)
        log_ph = torch.where(alive, ph, torch.ones_like(ph)).log()
        inner = torch.where(alive, log_ph * high + high_plogp + log_eps * low, torch.zeros_like(ph))
        total = total - (ph * inner).sum()
    return total


def _entropy_params(inv_temperature, value, eps):
    inv_temperature, value, eps = (as_float(inv_temperature, "inv_temperature"), as_float(value, "value"),
                                   as_float(eps, "eps"))
    if not eps > 0:
        raise ValueError(f"eps (the log clamp) must be positive, got {eps}")
    return inv_temperature, value, eps


def lfq_per_sample_entropy(x: torch.Tensor, inv_temperature: float = 100.0, value: float = 1.0,
                           clamp: bool = True, eps: float = 1e-5, tile: int = 4096) -> torch.Tensor:
    """Mean over rows of the entropy of each row's distribution over the 2^d codes. clamp=True: the anchor's
    value, log(p) clamped at eps (exact, O(N 2^(d/2) d), no 2^d grid); clamp=False: the exact entropy, the
    sum of per-bit binary entropies H_b(sigmoid(4 T v x_j)) (O(N d)). Differentiable."""
    check_float(x, "x")
    inv_temperature, value, eps = _entropy_params(inv_temperature, value, eps)
    tile = as_int(tile, "tile")
    d = x.shape[-1]
    x2 = x.float().reshape(-1, d)
    a_scale = 4.0 * inv_temperature * value
    if not clamp:
        a = a_scale * x2
        q = torch.sigmoid(a)
        return (-(q * F.logsigmoid(a) + (1 - q) * F.logsigmoid(-a))).sum(-1).mean()
    if not 1 <= d <= 40:
        raise ValueError(f"x.shape[-1] must be in [1, 40] for the clamped per-sample entropy, got {d}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    return _clamped_per_sample_sum(x2, a_scale, eps, int(tile)) / max(x2.shape[0], 1)


def lfq_codebook_entropy(x: torch.Tensor, inv_temperature: float = 100.0, value: float = 1.0,
                         eps: float = 1e-5, tile: int = 4096) -> torch.Tensor:
    """Entropy (log clamped at eps, like the anchor) of the batch-average code distribution over the 2^d
    implicit codes, streamed over row tiles (no N x 2^d buffer). Differentiable. d <= 24 (the 2^d average
    itself is kept)."""
    check_float(x, "x")
    inv_temperature, value, eps = _entropy_params(inv_temperature, value, eps)
    tile = as_int(tile, "tile")
    d = x.shape[-1]
    if not 1 <= d <= 24:
        raise ValueError(f"x.shape[-1] must be in [1, 24] for the codebook entropy (2^d floats), got {d}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    x2 = x.float().reshape(-1, d)
    return _CodebookEntropy.apply(x2, 4.0 * inv_temperature * value, eps, int(tile))


def lfq_entropy(x: torch.Tensor, inv_temperature: float = 100.0, value: float = 1.0, tile: int = 4096,
                clamp: bool = True):
    """(per_sample_entropy, codebook_entropy) of the anchor's LFQ entropy aux loss; see the module doc."""
    return (lfq_per_sample_entropy(x, inv_temperature, value, clamp=clamp, tile=tile),
            lfq_codebook_entropy(x, inv_temperature, value, tile=tile))
