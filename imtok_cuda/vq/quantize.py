"""Straight-through vector quantization against an explicit codebook, with the loss conventions of the
anchors, on top of the fused nearest-code search (imtok_cuda.vq.nearest).

    zq, indices, loss, info = quantize(z, codebook, metric="l2", convention="llamagen", beta=0.25)

metric "l2": argmin of |z|^2 + |e|^2 - 2 z.e (taming, LlamaGen, TiTok; normalize z and codebook first for their
l2-normalized variants, normalize=True does it with eps 1e-12). metric "cosine" (vector-quantize-pytorch
use_cosine_sim): z and codebook l2-normalized with eps 1e-6, argmax of the dot; zq are normalized rows.
Output: z + (e - z).detach() (straight-through, also in eval, like taming/LlamaGen/TiTok); straight_through=False
returns the exact codebook rows (vector-quantize-pytorch eval).
Losses (commitment = mse(zq.detach(), z), codebook = mse(zq, z.detach())):
  "llamagen" / "titok": codebook + beta * commitment (beta 0.25)
  "taming": beta * codebook + commitment (the legacy placement of beta)
  "vqtorch": beta * commitment (vector-quantize-pytorch: one mse, commitment_weight default 1; the codebook
             learns by EMA)
info: counts (int64 [K]) and perplexity of the batch, commitment and codebook losses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._qcommon import check_float
from .ema import code_counts, perplexity

__all__ = ["quantize", "quantize_loss", "nearest_indices", "CONVENTIONS"]

CONVENTIONS = ("llamagen", "titok", "taming", "vqtorch")


def nearest_indices(z: torch.Tensor, codebook: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """int64 indices [...] of the nearest code of each row of z [..., D] (lowest index on ties)."""
    if metric not in ("l2", "cosine"):
        raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
    from .nearest import nearest  # the fused search (imported lazily: vq/__init__ imports this module)

    dtype = torch.promote_types(z.dtype, codebook.dtype)  # search in the wider of the two dtypes
    idx, _ = nearest(z.detach().to(dtype), codebook.detach().to(dtype), metric)
    return idx.reshape(z.shape[:-1])


def quantize_loss(z: torch.Tensor, zq: torch.Tensor, convention: str = "llamagen", beta: float = 0.25):
    """(total, commitment, codebook) losses for encoder output z and selected codebook rows zq."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    commit = F.mse_loss(zq.detach(), z)
    if convention == "vqtorch":
        return beta * commit, commit, z.new_zeros(())
    cb = F.mse_loss(zq, z.detach())
    if convention == "taming":
        return beta * cb + commit, commit, cb
    return cb + beta * commit, commit, cb


def quantize(z: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", convention: str = "llamagen",
             beta: float = 0.25, normalize: bool = False, straight_through: bool = True,
             indices: torch.Tensor | None = None):
    """Quantize z [..., D] to codebook [K, D]. Returns (zq, indices int64 [...], loss, info). `indices` may be
    given (e.g. from a latent perturbation) to skip the search."""
    check_float(z, "z")
    check_float(codebook, "codebook")
    if codebook.dim() != 2:
        raise ValueError(f"codebook must have 2 dimensions [K, D], got shape {tuple(codebook.shape)}")
    if z.dim() < 1 or z.shape[-1] != codebook.shape[1]:
        raise ValueError(f"z.shape[-1] must equal codebook.shape[1] = {codebook.shape[1]}, got shape {tuple(z.shape)}")
    if metric == "cosine":
        z = F.normalize(z, dim=-1, eps=1e-6)
        codebook = F.normalize(codebook, dim=-1, eps=1e-6)
    elif normalize:
        z = F.normalize(z, dim=-1)
        codebook = F.normalize(codebook, dim=-1)
    if indices is None:
        indices = nearest_indices(z, codebook, metric)
    e = codebook[indices].to(z.dtype)
    loss, commit, cb = quantize_loss(z, e, convention, beta)
    zq = z + (e - z).detach() if straight_through else e
    counts = code_counts(indices, codebook.shape[0])
    info = {"counts": counts, "perplexity": perplexity(counts), "commitment_loss": commit.detach(),
            "codebook_loss": cb.detach()}
    return zq, indices, loss, info
