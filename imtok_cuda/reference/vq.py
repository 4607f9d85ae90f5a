"""Pure-PyTorch references of the vq ops: the math of taming / LlamaGen / TiTok / vector-quantize-pytorch.

These materialize the N x K distance matrix; they are the specification the fused kernels are tested against.
Half-precision inputs are upcast to float32 first (the kernels accumulate in fp32).
"""
import math

import torch
import torch.nn.functional as F


def _acc(t):
    return t.double() if t.dtype == torch.float64 else t.float()


def distance_matrix(x, codebook, metric="l2"):
    """[..., K] distances, smaller is closer. l2: (|x|^2 + |e|^2) - 2 x.e (no sqrt, no clamp);
    cosine: 1 - x_hat.e_hat with F.normalize(eps=1e-6) (vector-quantize-pytorch use_cosine_sim)."""
    x, codebook = _acc(x), _acc(codebook)
    if metric == "l2":
        return (x * x).sum(-1, keepdim=True) + (codebook * codebook).sum(-1) - 2 * x @ codebook.t()
    if metric == "cosine":
        return 1 - F.normalize(x, dim=-1, eps=1e-6) @ F.normalize(codebook, dim=-1, eps=1e-6).t()
    raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")


def nearest(x, codebook, metric="l2"):
    """(indices int64 [...], distances [...]): torch.argmin semantics (lowest index on ties, NaN wins)."""
    d = distance_matrix(x, codebook, metric)
    idx = d.argmin(-1)
    return idx, d.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


def nearest_topk(x, codebook, k, metric="l2"):
    """The k closest codes, ascending by distance, ties by index; NaN distances count as closest
    (so nearest_topk(...)[..., 0] == nearest(...))."""
    d = distance_matrix(x, codebook, metric)
    key = torch.where(torch.isnan(d), torch.full_like(d, -math.inf), d)
    order = torch.sort(key, dim=-1, stable=True).indices[..., :k]
    return order, d.gather(-1, order)


def latent_perturbation(x, codebook, indices, alpha=1.0, beta=0.1, delta=100, metric="l2", generator=None):
    """RobusTok latent perturbation: for the first floor(B * beta) samples of the batch (dim 0), each token is
    replaced with probability alpha by a code drawn uniformly from the delta codes nearest to x."""
    B = x.shape[0]
    n_pert = int(math.floor(B * beta))
    out = indices.clone()
    if n_pert == 0 or alpha <= 0:
        return out
    delta = min(int(delta), codebook.shape[0])
    cand, _ = nearest_topk(x[:n_pert], codebook, delta, metric)
    choice = torch.randint(0, delta, cand.shape[:-1], generator=generator, device=x.device)
    picked = cand.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    flip = torch.rand(cand.shape[:-1], generator=generator, device=x.device) < alpha
    out[:n_pert] = torch.where(flip, picked, out[:n_pert])
    return out
