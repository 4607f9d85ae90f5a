"""torch.nn quantizer modules over the imtok_cuda.vq ops.

Every module's forward returns (quantized, indices, loss, info) -- vector-quantize-pytorch's
(quantized, indices, loss) plus an info dict with the batch's usage counts and perplexity (and the loss terms).
Inputs are channel-last [..., dim]. Differences from vector-quantize-pytorch are listed per class.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import vq
from ..vq.quantize import CONVENTIONS

__all__ = ["VectorQuantizer", "ResidualVQ", "FSQ", "LFQ", "BinaryQuantizer"]


class VectorQuantizer(nn.Module):
    """Nearest-code vector quantizer with a learned or EMA codebook.

    Args:
        dim, codebook_size: D and K.
        metric: "l2" (taming, LlamaGen, TiTok) or "cosine" (vector-quantize-pytorch use_cosine_sim).
        normalize: l2-normalize z and codebook (eps 1e-12) before an "l2" search (LlamaGen / TiTok).
        ema: EMA codebook (vector-quantize-pytorch) instead of a learned nn.Parameter.
        decay, eps: EMA decay (0.8) and Laplace smoothing (1e-5).
        commitment_weight: beta. Defaults: 1.0 with ema (vector-quantize-pytorch), 0.25 otherwise (LlamaGen).
        loss_convention: "llamagen" / "titok" / "taming" / "vqtorch" (see imtok_cuda.vq.quantize); default
            "vqtorch" with ema, "llamagen" otherwise.
        dead_code_threshold: EMA codes whose cluster size falls below it are replaced by batch vectors.
        straight_through_eval: keep z + (e - z).detach() in eval (taming/LlamaGen/TiTok); False returns exact
            codebook rows in eval (vector-quantize-pytorch).
        perturbation: None or a dict (alpha, beta, delta) for RobusTok latent perturbation in training, used when
            imtok_cuda.vq.latent_perturbation exists.

    Differences from vector-quantize-pytorch: EMA statistics come from a deterministic fused segment sum
    (no N x K one-hot), counts and sums are all-reduced whenever torch.distributed is initialized (every rank
    runs the same collectives, replacement vectors are broadcast from rank 0), the returned loss is a scalar
    and info carries usage counts and perplexity.
    """

    def __init__(self, dim: int, codebook_size: int, metric: str = "l2", normalize: bool = False, ema: bool = True,
                 decay: float = 0.8, eps: float = 1e-5, commitment_weight: float | None = None,
                 loss_convention: str | None = None, dead_code_threshold: float = 0.0,
                 straight_through_eval: bool = True, perturbation: dict | None = None):
        super().__init__()
        if metric not in ("l2", "cosine"):
            raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
        if dim < 1 or codebook_size < 1:
            raise ValueError(f"dim and codebook_size must be >= 1, got {dim}, {codebook_size}")
        self.dim, self.codebook_size, self.metric, self.normalize = dim, codebook_size, metric, normalize
        self.ema, self.decay, self.eps = ema, decay, eps
        self.loss_convention = loss_convention or ("vqtorch" if ema else "llamagen")
        if self.loss_convention not in CONVENTIONS:
            raise ValueError(f"loss_convention must be one of {CONVENTIONS}, got {self.loss_convention!r}")
        self.commitment_weight = commitment_weight if commitment_weight is not None else (1.0 if ema else 0.25)
        self.dead_code_threshold = dead_code_threshold
        self.straight_through_eval = straight_through_eval
        self.perturbation = perturbation
        init = torch.randn(codebook_size, dim) if ema else torch.empty(codebook_size, dim).uniform_(
            -1.0 / codebook_size, 1.0 / codebook_size)
        if metric == "cosine":
            init = F.normalize(init, dim=-1)
        if ema:
            self.register_buffer("embed", init)
            self.register_buffer("cluster_size", torch.ones(codebook_size))
            self.register_buffer("embed_avg", init.clone())
        else:
            self.embed = nn.Parameter(init)

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook the search uses (l2-normalized for cosine / normalize=True)."""
        if self.metric == "cosine":
            return F.normalize(self.embed, dim=-1, eps=1e-6)
        return F.normalize(self.embed, dim=-1) if self.normalize else self.embed

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook[indices]

    def forward(self, z: torch.Tensor):
        if z.shape[-1] != self.dim:
            raise ValueError(f"z.shape[-1] must be {self.dim}, got shape {tuple(z.shape)}")
        zz, cb = z, self.embed
        if self.metric == "cosine":
            zz, cb = F.normalize(z, dim=-1, eps=1e-6), F.normalize(cb, dim=-1, eps=1e-6)
        elif self.normalize:
            zz, cb = F.normalize(z, dim=-1), F.normalize(cb, dim=-1)
        st = self.training or self.straight_through_eval
        zq, indices, loss, info = vq.quantize(zz, cb, metric=self.metric, convention=self.loss_convention,
                                              beta=self.commitment_weight, straight_through=st)
        if self.training and self.perturbation is not None and hasattr(vq, "latent_perturbation"):
            # RobusTok: after the losses, swap codes of the first floor(B * beta) samples for random near ones
            new = vq.latent_perturbation(zz.detach(), cb.detach(), indices, metric=self.metric, **self.perturbation)
            info["num_perturbed"] = int((new != indices).sum())
            zq = zz + (cb[new].to(zz.dtype) - zz).detach()
        if self.training and self.ema:
            x = zz.detach()
            upd = vq.ema_update_(self.embed, self.cluster_size, self.embed_avg, x.reshape(-1, self.dim),
                                 indices.reshape(-1), decay=self.decay, eps=self.eps,
                                 dead_threshold=self.dead_code_threshold)
            if self.metric == "cosine":
                self.embed.copy_(F.normalize(self.embed, dim=-1, eps=1e-6))
            info["num_replaced"] = upd["num_replaced"]
        return zq, indices, loss, info


class ResidualVQ(nn.Module):
    """num_quantizers VectorQuantizers applied to the running residual (residual_{l+1} = residual_l - q_l,
    detached). Returns (quantized, indices [..., L], losses [L], info with per-level counts [L, K] and
    perplexities [L]). Difference from vector-quantize-pytorch: one straight-through on the sum (gradient 1x to
    z; the anchor sums per-level straight-through outputs); no quantize dropout."""

    def __init__(self, dim: int, codebook_size: int, num_quantizers: int, **kwargs):
        super().__init__()
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers must be >= 1, got {num_quantizers}")
        self.layers = nn.ModuleList([VectorQuantizer(dim, codebook_size, **kwargs) for _ in range(num_quantizers)])

    def forward(self, z: torch.Tensor):
        residual = z
        total = torch.zeros_like(z)
        idxs, losses, counts, ppl = [], [], [], []
        for layer in self.layers:
            codebook = layer.codebook.detach().clone()  # before an EMA update inside the layer
            _, idx, loss, info = layer(residual)
            q = codebook[idx].to(z.dtype)
            total = total + q
            residual = residual - q
            idxs.append(idx)
            losses.append(loss)
            counts.append(info["counts"])
            ppl.append(info["perplexity"])
        out = z + (total - z).detach()
        return out, torch.stack(idxs, -1), torch.stack(losses), {"counts": torch.stack(counts),
                                                                  "perplexity": torch.stack(ppl)}


class FSQ(nn.Module):
    """Finite scalar quantization (imtok_cuda.vq.fsq) with optional in/out projections when dim != len(levels).
    Returns (quantized, indices int32, loss = 0, info). Differences from vector-quantize-pytorch: quantization
    always in fp32 (fp64 for fp64) and the output cast back to the input dtype; indices exact above 2^24
    codes (the anchor sums them in fp32); no implicit-codebook buffer; one codebook (num_codebooks = 1)."""

    def __init__(self, levels, dim: int | None = None):
        super().__init__()
        self.levels = list(levels)
        self.codebook_size = vq.fsq_codebook_size(self.levels)
        d = len(self.levels)
        self.dim = dim or d
        self.project_in = nn.Linear(self.dim, d) if self.dim != d else nn.Identity()
        self.project_out = nn.Linear(d, self.dim) if self.dim != d else nn.Identity()

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return self.project_out(vq.fsq_indices_to_codes(indices, self.levels))

    def forward(self, z: torch.Tensor):
        if z.shape[-1] != self.dim:
            raise ValueError(f"z.shape[-1] must be {self.dim}, got shape {tuple(z.shape)}")
        zin = self.project_in(z)
        codes, indices = vq.fsq(zin, self.levels)
        out = self.project_out(codes.to(zin.dtype))
        counts = vq.code_counts(indices, self.codebook_size) if self.codebook_size <= 2**24 else None
        info = {"counts": counts, "perplexity": vq.perplexity(counts) if counts is not None else None}
        return out, indices, z.new_zeros(()), info


class LFQ(nn.Module):
    """Lookup-free quantization (MAGVIT-v2) / BSQ (spherical=True) with the entropy aux loss
    aux = entropy_loss_weight * (per_sample_entropy - diversity_gamma * codebook_entropy)
          + commitment_loss_weight * mse(x, q.detach()),
    computed in training only (0 in eval), as vector-quantize-pytorch's LFQ. Returns (quantized, indices int64,
    aux_loss, info with per_sample_entropy, codebook_entropy, counts (d <= 24) and perplexity).
    Differences: both entropy terms are computed from the per-bit factorization without the N x 2^d softmax
    (works at 2^18 codes and beyond) and equal the anchor's (log clamp 1e-5 included) to fp32 rounding;
    exact_entropy=True uses the unclamped per-sample entropy (sum of per-bit entropies) instead; one codebook;
    no projections / soft clamp / masks / frac_per_sample_entropy. Above d = 24 the codebook entropy
    (a 2^d vector) is not computed (0) and above d = 40 the per-sample entropy is the unclamped one."""

    def __init__(self, dim: int, entropy_loss_weight: float = 0.1, commitment_loss_weight: float = 0.0,
                 diversity_gamma: float = 1.0, codebook_scale: float = 1.0, spherical: bool = False,
                 inv_temperature: float = 100.0, tile: int = 4096, exact_entropy: bool = False):
        super().__init__()
        if not 1 <= dim <= 62:
            raise ValueError(f"dim must be in [1, 62], got {dim}")
        self.dim, self.spherical, self.scale = dim, spherical, codebook_scale
        self.entropy_loss_weight, self.commitment_loss_weight = entropy_loss_weight, commitment_loss_weight
        self.diversity_gamma, self.inv_temperature, self.tile = diversity_gamma, inv_temperature, tile
        self.value = vq.lfq_value(dim, codebook_scale, spherical)
        self.exact_entropy = exact_entropy

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        mask = 2 ** torch.arange(self.dim - 1, -1, -1, device=indices.device)
        bits = (indices[..., None].long() & mask) != 0
        return torch.where(bits, self.value, -self.value).float()

    def forward(self, x: torch.Tensor):
        if x.shape[-1] != self.dim:
            raise ValueError(f"x.shape[-1] must be {self.dim}, got shape {tuple(x.shape)}")
        q, indices, xu = vq.lfq_quantize(x, self.scale, self.spherical)
        out = q if self.training else q.detach()
        info = {}
        zero = x.new_zeros((), dtype=torch.float32)
        if self.training:
            ps = vq.lfq_per_sample_entropy(xu, self.inv_temperature, self.value,
                                           clamp=not self.exact_entropy and self.dim <= 40, tile=self.tile)
            cb = (vq.lfq_codebook_entropy(xu, self.inv_temperature, self.value, tile=self.tile)
                  if self.dim <= 24 else zero)
            commit = F.mse_loss(xu, q.detach()) if self.commitment_loss_weight > 0 else zero
            loss = self.entropy_loss_weight * (ps - self.diversity_gamma * cb) + self.commitment_loss_weight * commit
            info.update(per_sample_entropy=ps.detach(), codebook_entropy=cb.detach(), commitment_loss=commit.detach())
        else:
            loss = zero
        counts = vq.code_counts(indices, 2**self.dim) if self.dim <= 24 else None
        info.update(counts=counts, perplexity=vq.perplexity(counts) if counts is not None else None)
        return out.to(x.dtype), indices, loss, info


class BinaryQuantizer(nn.Module):
    """Instella-T2I binary quantizer (imtok_cuda.vq.binary_quantize) with an optional decode embedding
    [dim, embed_dim]. Returns (out, bits, loss, info with the bit usage rate). Bits sampled in training,
    thresholded in eval."""

    def __init__(self, dim: int, embed_dim: int | None = None, temperature: float = 1.0):
        super().__init__()
        self.dim, self.temperature = dim, temperature
        self.embedding = nn.Parameter(torch.randn(dim, embed_dim) / math.sqrt(dim)) if embed_dim else None

    def forward(self, z: torch.Tensor):
        if z.shape[-1] != self.dim:
            raise ValueError(f"z.shape[-1] must be {self.dim}, got shape {tuple(z.shape)}")
        out, bits, loss = vq.binary_quantize(z, self.embedding, training=self.training, temperature=self.temperature)
        return out, bits, loss, {"bit_rate": bits.detach().float().mean()}
