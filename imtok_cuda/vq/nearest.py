"""Nearest-code search: the fused core of every VQ tokenizer.

`nearest(x, codebook, metric)` returns the closest code of every row of x without building the N x K
distance matrix (extra memory O(N) plus a packed copy of the codebook), with torch.argmin's tie rule
(lowest index) and NaN rule (a NaN distance wins, the first one), fp32 accumulation for half inputs.
"""
import math

import torch

from .. import _loader  # noqa: F401  (loads the kernels)
from .._args import as_float, as_int, fcheck, fcheck_dim, fcheck_floating
from .._register import register_autograd, register_fake

_METRICS = ("l2", "cosine")
MAX_TOPK = _loader.LIMITS["max_topk"]


def _check(x, codebook, metric):
    if not isinstance(x, torch.Tensor) or not isinstance(codebook, torch.Tensor):
        raise TypeError("x and codebook must be tensors")
    if not isinstance(metric, str) or metric not in _METRICS:
        raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
    if codebook.dim() != 2:
        raise ValueError(f"codebook must have 2 dimensions [K, D], got shape {tuple(codebook.shape)}")
    if x.dim() < 1 or x.shape[-1] != codebook.shape[1]:
        raise ValueError(f"x.shape[-1] must equal codebook.shape[1] ({codebook.shape[1]}), got x shape {tuple(x.shape)}")


def nearest(x, codebook, metric="l2"):
    """Closest code for every vector.

    Args:
        x: [..., D] float16 / bfloat16 / float32 / float64.
        codebook: [K, D], same dtype and device as x.
        metric: "l2": argmin (|x|^2 + |e|^2) - 2 x.e (taming, LlamaGen, TiTok; normalize first yourself for
            their l2-normalized codebooks); "cosine": argmax of x_hat.e_hat with F.normalize(eps=1e-6)
            (vector-quantize-pytorch use_cosine_sim).
    Returns:
        indices int64 [...] and distances [...] (float32, float64 for float64 inputs): the squared l2
        distance, or 1 - cosine similarity. distances is differentiable w.r.t. x and codebook.
    """
    _check(x, codebook, metric)
    dist, idx = torch.ops.imtok_cuda.vq_nearest(x, codebook, metric)
    return idx, dist


def nearest_topk(x, codebook, k, metric="l2"):
    """The k closest codes of every vector (k <= 128), ascending by distance, ties by lower index.
    Returns indices int64 [..., k] and distances [..., k]; column 0 equals nearest()."""
    _check(x, codebook, metric)
    k = as_int(k, "k")
    if not 1 <= k <= min(MAX_TOPK, codebook.shape[0]):
        raise ValueError(f"k must be in [1, min({MAX_TOPK}, K={codebook.shape[0]})], got {k}")
    dist, idx = torch.ops.imtok_cuda.vq_nearest_topk(x, codebook, k, metric)
    return idx, dist


def latent_perturbation(x, codebook, indices, alpha=1.0, beta=0.1, delta=100, metric="l2", generator=None):
    """RobusTok latent perturbation ("Image Tokenizer Needs Post-Training"): for the first floor(B * beta)
    samples (dim 0 of x), each token's code is replaced with probability alpha by one drawn uniformly from the
    delta codes nearest to the continuous x (delta <= 128). Returns new indices; apply after the VQ losses.
    The reference's protocol and random draws (the candidate choice, then the flip), with the fused nearest_topk
    finding the candidates."""
    _check(x, codebook, metric)
    delta = as_int(delta, "delta")
    alpha, beta = as_float(alpha, "alpha"), as_float(beta, "beta")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the replacement probability) must be in [0, 1], got {alpha}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta (the perturbed fraction of the batch) must be in [0, 1], got {beta}")
    if delta < 1:
        raise ValueError(f"delta must be >= 1, got {delta}")
    if min(delta, codebook.shape[0]) > MAX_TOPK:
        raise ValueError(f"delta must be <= {MAX_TOPK}, got {delta}")
    out = indices.clone()
    n = int(math.floor(x.shape[0] * beta))
    if n == 0 or alpha <= 0:
        return out
    cand, _ = nearest_topk(x[:n], codebook, min(delta, codebook.shape[0]), metric)
    rows = cand.shape[:-1]
    pick = torch.randint(0, cand.shape[-1], rows, generator=generator, device=x.device)
    flip = torch.rand(rows, generator=generator, device=x.device) < alpha
    out[:n] = torch.where(flip, cand.gather(-1, pick[..., None])[..., 0], out[:n])
    return out


# ---- fake (meta) kernels -------------------------------------------------------------------------------
def _dist_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_fake(x, codebook, metric="l2"):
    """csrc/vq/vq_checks.h (parse_metric, check_nearest_inputs) restated, same exception types."""
    fcheck(metric in _METRICS, lambda: 'metric must be "l2" or "cosine", got "%s"' % (metric,))
    fcheck_floating(x, "x")
    fcheck_floating(codebook, "codebook")
    if x.dtype != codebook.dtype:
        raise TypeError(f"x and codebook must have the same dtype, got {x.dtype} and {codebook.dtype}")
    if x.device != codebook.device:
        raise ValueError(f"x and codebook must be on the same device, got {x.device} and {codebook.device}")
    fcheck_dim(codebook, 2, "codebook")
    fcheck(x.dim() >= 1, lambda: "x must have at least 1 dimension(s), got shape %s" % (tuple(x.shape),))
    fcheck(codebook.shape[0] >= 1, lambda: "codebook must hold at least one code, got shape %s" % (
        tuple(codebook.shape),))
    fcheck(x.shape[-1] == codebook.shape[1], lambda: "x.shape[-1] (%s) must equal codebook.shape[1] (%s)" % (
        x.shape[-1], codebook.shape[1]))


@register_fake("vq_nearest")
def _nearest_fake(x, codebook, metric="l2"):
    _check_fake(x, codebook, metric)
    shape = x.shape[:-1]
    return x.new_empty(shape, dtype=_dist_dtype(x)), x.new_empty(shape, dtype=torch.int64)


@register_fake("vq_nearest_topk")
def _nearest_topk_fake(x, codebook, k, metric="l2"):
    _check_fake(x, codebook, metric)
    fcheck(1 <= k <= MAX_TOPK, lambda: "k must be in [1, %d], got %s" % (MAX_TOPK, k))
    fcheck(k <= codebook.shape[0], lambda: "k (%s) must not exceed the number of codes in codebook (%s)" % (
        k, codebook.shape[0]))
    shape = (*x.shape[:-1], k)
    return x.new_empty(shape, dtype=_dist_dtype(x)), x.new_empty(shape, dtype=torch.int64)


# ---- autograd: distances are differentiable w.r.t. x and the chosen codes ---------------------------------
def _distance_grads(x, codebook, idx, grad_dist, metric, need_x, need_cb):
    """Gradients of d(x_n, e_idx[n]) for every selected pair (idx may have a trailing k dim)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    D = codebook.shape[1]
    topk = idx.dim() == x.dim()  # [..., k]
    xa = x.to(acc).unsqueeze(-2) if topk else x.to(acc)
    e = codebook.to(acc)[idx]
    g = grad_dist.to(acc).unsqueeze(-1)
    if metric == "l2":
        gx = 2 * g * (xa - e)
        ge = 2 * g * (e - xa)
    else:  # d = 1 - x_hat.e_hat, x_hat = x / max(|x|, eps)
        eps = 1e-6
        nx = xa.norm(dim=-1, keepdim=True)
        ne = codebook.to(acc).norm(dim=-1, keepdim=True)[idx]
        x_hat, e_hat = xa / nx.clamp_min(eps), e / ne.clamp_min(eps)
        s = (x_hat * e_hat).sum(-1, keepdim=True)
        # d x_hat / d x = (I - x_hat x_hat^T) / |x| when |x| > eps, else I / eps
        gx = -g * torch.where(nx > eps, (e_hat - s * x_hat) / nx.clamp_min(eps), e_hat / eps)
        ge = -g * torch.where(ne > eps, (x_hat - s * e_hat) / ne.clamp_min(eps), x_hat / eps)
    grad_x = grad_cb = None
    if need_x:
        grad_x = (gx.sum(-2) if topk else gx).to(x.dtype)
    if need_cb:
        grad_cb = torch.zeros(codebook.shape, dtype=acc, device=codebook.device)
        grad_cb.index_add_(0, idx.reshape(-1), ge.reshape(-1, D))
        grad_cb = grad_cb.to(codebook.dtype)
    return grad_x, grad_cb


def _setup(ctx, inputs, output):
    x, codebook, *rest = inputs
    ctx.metric = rest[-1] if rest and isinstance(rest[-1], str) else "l2"
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, codebook, output[1])


def _backward(ops, ctx, grad_dist, grad_idx):
    x, codebook, idx = ctx.saved_tensors
    gx, gc = _distance_grads(x, codebook, idx, grad_dist, ctx.metric, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    return gx, gc, None


def _backward_topk(ops, ctx, grad_dist, grad_idx):
    gx, gc, _ = _backward(ops, ctx, grad_dist, grad_idx)
    return gx, gc, None, None


register_autograd("vq_nearest", _backward, _setup)
register_autograd("vq_nearest_topk", _backward_topk, _setup)
