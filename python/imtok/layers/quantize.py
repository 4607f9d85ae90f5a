"""The quantizers of the discrete tokenizers: VectorQuantize (LlamaGen VQGAN, TiTok, One-D-Piece),
FiniteScalarQuantize (FlexTok's FSQ; specs/vq.md) and BinaryQuantize (Instella-T2I's binary tokens, at the end
of this file).

    vq = VectorQuantize(codebook_size=4096, dim=12, beta=0.25, l2_norm=True)
    z_q, indices, info = vq(z)          # z [..., dim] channel-last; z_q straight-through, same shape

Math (LlamaGen tokenizer/tokenizer_image/vq_model.py VectorQuantizer and TiTok modeling/quantizer/quantizer.py,
which agree):
  * l2_norm: z and the codebook are l2-normalized (eps 1e-12) before the search and the losses;
  * nearest code: argmin_k |z|^2 + |e_k|^2 - 2 z.e_k, lowest index on ties;
  * codebook_loss = mean((e - z.detach())^2), commitment_loss = beta * mean((e.detach() - z)^2),
    quantizer_loss = codebook_loss + commitment_loss (+ entropy_loss);
  * z_q = z + (e - z).detach() (straight-through, in eval too);
  * entropy_loss (LlamaGen, entropy_loss_ratio > 0 only): ratio * (sample entropy - entropy of the batch-mean
    distribution) of softmax(-d / temperature); it needs the N x K distances, which it builds.
  * RobusTok latent perturbation (training only, after the losses so it only changes what the decoder sees):
    the first floor(B * beta) samples of the batch have each token replaced with probability alpha by one of the
    delta codes nearest to z. alpha and delta are scaled by a ratio annealed linearly from 1 (at step
    anneal_start) to end_ratio (at step anneal_end), the schedule of the RobusTok training script
    (--alpha --beta --delta --end-ratio --anneal-start --anneal-end); the step counter is a buffer that counts
    training forward calls (or set it with `set_step`).

The nearest-code search and the perturbation run on the fused imtok_cuda.vq ops (no N x K matrix), or on
imtok_cuda.reference.vq inside `imtok.use_reference()`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import imtok_cuda.vq as _fused_vq
from imtok_cuda.reference import vq as _reference_vq
from imtok_cuda.vq.nearest import MAX_TOPK
from imtok_cuda.reference import vq_quantizers as _reference_quantizers

from .switch import reference_enabled

__all__ = ["VectorQuantize", "FiniteScalarQuantize", "BinaryQuantize", "entropy_loss"]

PERTURBATION_DEFAULTS = {"alpha": 1.0, "beta": 0.1, "delta": 100, "end_ratio": 1.0, "anneal_start": 0,
                         "anneal_end": 0}


def entropy_loss(z: torch.Tensor, codebook: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """LlamaGen's compute_entropy_loss(-d): sample entropy minus the entropy of the mean distribution of
    softmax(-d / temperature) over the codes (log clamp 1e-5 on the mean). Builds the N x K matrix."""
    z2 = z.reshape(-1, z.shape[-1])
    d = (z2 * z2).sum(1, keepdim=True) + (codebook * codebook).sum(1) - 2 * z2 @ codebook.t()
    logits = -d / temperature
    probs = logits.softmax(-1)
    log_probs = (logits + 1e-5).log_softmax(-1)
    avg_probs = probs.mean(0)
    avg_entropy = -(avg_probs * torch.log(avg_probs + 1e-5)).sum()
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    return sample_entropy - avg_entropy


class VectorQuantize(nn.Module):
    """Learned codebook `embedding` [K, D] (nn.Embedding, the anchors' name) with LlamaGen / TiTok losses.

    forward(z [..., D]) -> (z_q [..., D] in z's dtype, indices int64 [...], info) with info: quantizer_loss,
    codebook_loss, commitment_loss, entropy_loss (scalars, fp32), perplexity of the batch's code usage, and
    num_perturbed (training with perturbation)."""

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, l2_norm: bool = True,
                 entropy_loss_ratio: float = 0.0, entropy_temperature: float = 0.01,
                 perturbation: dict | None = None):
        super().__init__()
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"codebook_size and dim must be >= 1, got {codebook_size}, {dim}")
        self.codebook_size, self.dim, self.beta, self.l2_norm = codebook_size, dim, beta, l2_norm
        self.entropy_loss_ratio, self.entropy_temperature = entropy_loss_ratio, entropy_temperature
        self.perturbation = None
        if perturbation is not None:
            unknown = set(perturbation) - set(PERTURBATION_DEFAULTS)
            if unknown:
                raise ValueError(f"perturbation has unknown keys {sorted(unknown)}; known: {sorted(PERTURBATION_DEFAULTS)}")
            self.perturbation = {**PERTURBATION_DEFAULTS, **perturbation}
            if not 0 <= self.perturbation["beta"] <= 1 or not 0 <= self.perturbation["alpha"] <= 1:
                raise ValueError(f"perturbation alpha and beta must be in [0, 1], got {self.perturbation}")
            if min(int(self.perturbation["delta"]), codebook_size) > MAX_TOPK:
                raise ValueError(f"perturbation delta must be <= {MAX_TOPK}, got {self.perturbation['delta']}")
        self.embedding = nn.Embedding(codebook_size, dim)
        self.embedding.weight.data.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        if l2_norm:
            self.embedding.weight.data = F.normalize(self.embedding.weight.data, dim=-1)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"codebook_size={self.codebook_size}, dim={self.dim}, beta={self.beta}, l2_norm={self.l2_norm}, "
                f"perturbation={self.perturbation}")

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook rows [..., D] of int indices [...] in [0, K)."""
        check_tokens(indices, self.codebook_size, "tokens")
        return self.codebook()[indices.long()]

    def set_step(self, step: int):
        self.step.fill_(int(step))

    def perturbation_schedule(self) -> tuple[float, int]:
        """(alpha, delta) at the current step."""
        p = self.perturbation
        start, end, s = p["anneal_start"], p["anneal_end"], int(self.step)
        if end <= start:
            ratio = 1.0 if s < start else p["end_ratio"]
        else:
            t = min(max((s - start) / (end - start), 0.0), 1.0)
            ratio = 1.0 + (p["end_ratio"] - 1.0) * t
        return p["alpha"] * ratio, max(1, int(round(p["delta"] * ratio)))

    def forward(self, z: torch.Tensor):
        if z.shape[-1] != self.dim:
            raise ValueError(f"z.shape[-1] must be {self.dim}, got shape {tuple(z.shape)}")
        reference = reference_enabled()
        in_dtype = z.dtype
        z = z.float()  # quantization in fp32 (TiTok disables autocast here)
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        codebook = self.codebook().float()
        if reference:
            indices, _ = _reference_vq.nearest(z.detach(), codebook.detach(), "l2")
        else:
            indices, _ = _fused_vq.nearest(z.detach(), codebook.detach(), "l2")
        e = codebook[indices]
        codebook_loss = torch.mean((e - z.detach()) ** 2)
        commitment_loss = self.beta * torch.mean((e.detach() - z) ** 2)
        ent = z.new_zeros(())
        if self.training and self.entropy_loss_ratio > 0:
            ent = self.entropy_loss_ratio * entropy_loss(z, codebook, self.entropy_temperature)
        info = {"quantizer_loss": codebook_loss + commitment_loss + ent, "codebook_loss": codebook_loss,
                "commitment_loss": commitment_loss, "entropy_loss": ent}
        if self.training and self.perturbation is not None:
            alpha, delta = self.perturbation_schedule()
            perturb = _reference_vq.latent_perturbation if reference else _fused_vq.latent_perturbation
            new = perturb(z.detach(), codebook.detach(), indices, alpha=alpha, beta=self.perturbation["beta"],
                          delta=delta, metric="l2")
            info["num_perturbed"] = int((new != indices).sum())
            e = codebook[new]
        if self.training:
            self.step += 1
        counts = (_reference_quantizers.code_counts(indices, self.codebook_size) if reference
                  else _fused_vq.code_counts(indices, self.codebook_size))
        info["perplexity"] = (_reference_quantizers.perplexity(counts) if reference
                              else _fused_vq.perplexity(counts))
        z_q = z + (e - z).detach()
        return z_q.to(in_dtype), indices, info


class FiniteScalarQuantize(nn.Module):
    """FSQ (Mentzer et al.) on imtok_cuda.vq.fsq, or its reference inside `imtok.use_reference()`: no parameters,
    no loss, the implicit codebook never built.

    forward(z [..., len(levels)]) -> (codes [..., d] fp32 in [-1, 1], straight-through; indices int64 [...];
    info with the batch's code-usage perplexity). lookup(indices) -> codes."""

    def __init__(self, levels):
        super().__init__()
        self.levels = [int(L) for L in levels]
        self.dim = len(self.levels)
        self.codebook_size = _fused_vq.fsq_codebook_size(self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, codebook_size={self.codebook_size}"

    def forward(self, z: torch.Tensor):
        if z.shape[-1] != self.dim:
            raise ValueError(f"z.shape[-1] must be {self.dim} (len(levels)), got shape {tuple(z.shape)}")
        reference = reference_enabled()
        codes, indices = (_reference_quantizers.fsq if reference else _fused_vq.fsq)(z, self.levels)
        indices = indices.long()
        counts = (_reference_quantizers.code_counts(indices, self.codebook_size) if reference
                  else _fused_vq.code_counts(indices, self.codebook_size))
        perplexity = (_reference_quantizers.perplexity(counts) if reference else _fused_vq.perplexity(counts))
        return codes, indices, {"perplexity": perplexity}

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes [..., d] (fp32) of int indices [...] in [0, codebook_size)."""
        check_tokens(indices, self.codebook_size, "tokens")
        convert = (_reference_quantizers.fsq_indices_to_codes if reference_enabled()
                   else _fused_vq.fsq_indices_to_codes)
        return convert(indices.long(), self.levels)


def check_tokens(tokens, codebook_size: int, name: str = "tokens"):
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= codebook_size):
        raise ValueError(f"{name} must be in [0, {codebook_size}), got values in "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")


class BinaryQuantize(nn.Module):
    """Instella-T2I's binary quantizer with VectorQuantize's interface (imtok_cuda.vq.binary_quantize).

    forward(z [..., dim] logits) -> (bits [..., dim] in z's dtype, bits int64 [..., dim], info).
    Eval: bits = (sigmoid(z) > 0.5). Training: p = sigmoid(z / temperature), bits ~ Bernoulli(p) with the
    straight-through gradient of p; info["quantizer_loss"] = loss_weight * mean(p (1 - p)) (pushes p to 0 or 1;
    0 in eval), info["bit_rate"] = the fraction of ones. The bits' embedding (bits @ E) is the next linear layer
    of the model (TiTok's decoder_embed). The temperature is annealed by the training loop (set
    `.temperature`)."""

    def __init__(self, dim: int, temperature: float = 1.0, loss_weight: float = 1.0):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim, self.temperature, self.loss_weight = dim, temperature, loss_weight

    def extra_repr(self) -> str:
        return f"dim={self.dim}, temperature={self.temperature}, loss_weight={self.loss_weight}"

    def lookup(self, bits: torch.Tensor) -> torch.Tensor:
        """Integer bits [..., dim] in {0, 1} -> float bits."""
        check_tokens(bits, 2, "tokens")
        if bits.shape[-1] != self.dim:
            raise ValueError(f"tokens must have {self.dim} bits in the last dimension, got shape {tuple(bits.shape)}")
        return bits.float()

    def forward(self, z: torch.Tensor):
        if z.shape[-1] != self.dim:
            raise ValueError(f"z.shape[-1] must be {self.dim}, got shape {tuple(z.shape)}")
        quantize = _reference_quantizers.binary_quantize if reference_enabled() else _fused_vq.binary_quantize
        bits, _, loss = quantize(z, None, training=self.training, temperature=self.temperature)
        hard = bits.detach().round().long()
        info = {"quantizer_loss": self.loss_weight * loss.float(), "binary_loss": loss.float(),
                "bit_rate": hard.float().mean()}
        return bits, hard, info
