"""Instella-T2I binary quantizer.

    out, bits, loss = binary_quantize(z, embedding=None, training=False, temperature=1.0)

Eval: bits = (sigmoid(z) > 0.5) in z's dtype (in fp16/bf16 this differs from z > 0 for tiny z: sigmoid rounds
to 0.5). Train: p = sigmoid(z / T), bits = bernoulli(p) + p - p.detach() (straight-through p),
loss = mean(p (1 - p)) (0 in eval). Decode = bits @ embedding when an embedding [d, D] is given.
Elementwise torch ops (memory-bound; no dedicated kernel), checked against imtok_cuda.reference.vq_quantizers.
"""
from __future__ import annotations

import torch

from .._args import as_float
from ._qcommon import check_float

__all__ = ["binary_quantize"]


def binary_quantize(z: torch.Tensor, embedding: torch.Tensor | None = None, training: bool = False,
                    temperature: float = 1.0, generator: torch.Generator | None = None):
    check_float(z, "z")
    temperature = as_float(temperature, "temperature")  # NaN / inf: ValueError (a NaN temperature gave NaN bits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if embedding is not None:
        check_float(embedding, "embedding")
        if embedding.dim() != 2 or embedding.shape[0] != z.shape[-1]:
            raise ValueError(f"embedding must have shape [{z.shape[-1]}, D], got {tuple(embedding.shape)}")
    if training:
        p = torch.sigmoid(z / temperature)
        bits = torch.bernoulli(p.detach(), generator=generator) + (p - p.detach())  # straight-through p
        loss = (p * (1 - p)).mean()
    else:  # sigmoid in z's dtype, as the anchor does
        bits, loss = (torch.sigmoid(z) > 0.5).to(z.dtype), z.new_zeros(())
    return (bits if embedding is None else bits @ embedding.to(bits.dtype)), bits, loss
