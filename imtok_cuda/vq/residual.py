"""Residual VQ: L levels of nearest-code quantization of the running residual.

    out, indices, losses, info = residual_vq(z, codebooks, metric="l2", beta=0.25)

residual_0 = z; q_l = codebook_l[nearest(residual_l)]; residual_{l+1} = residual_l - q_l.detach();
out = z + (sum_l q_l - z).detach() (straight-through; gradient 1x to z, where vector-quantize-pytorch's
sum of per-level straight-through outputs passes L x); indices [..., L] int64; losses [L] per level
(convention as in quantize, on each level's residual; the commitment term of level l reaches z through
residual_l). info: per-level counts [L, K] and perplexities [L].
"""
from __future__ import annotations

import torch

from .quantize import quantize

__all__ = ["residual_vq"]


def residual_vq(z: torch.Tensor, codebooks, metric: str = "l2", convention: str = "llamagen", beta: float = 0.25):
    if isinstance(codebooks, torch.Tensor):
        if codebooks.dim() != 3:
            raise ValueError(f"codebooks must be [L, K, D] or a list of [K, D], got shape {tuple(codebooks.shape)}")
        codebooks = list(codebooks.unbind(0))
    if len(codebooks) == 0:
        raise ValueError("codebooks must hold at least one level")
    residual = z
    total = torch.zeros_like(z)
    idxs, losses, counts, ppl = [], [], [], []
    for cb in codebooks:
        _, idx, loss, info = quantize(residual, cb, metric=metric, convention=convention, beta=beta,
                                      straight_through=False)
        q = cb[idx].to(z.dtype)
        total = total + q
        residual = residual - q.detach()
        idxs.append(idx)
        losses.append(loss)
        counts.append(info["counts"])
        ppl.append(info["perplexity"])
    out = z + (total - z).detach()
    return out, torch.stack(idxs, -1), torch.stack(losses), {"counts": torch.stack(counts), "perplexity": torch.stack(ppl)}
