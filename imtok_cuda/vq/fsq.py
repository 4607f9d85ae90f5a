"""Finite scalar quantization (Mentzer et al.) with vector-quantize-pytorch 1.32's conventions, computed in
fp32 (fp64 for fp64 input) whatever the input dtype, never building the implicit codebook.

    codes, indices = fsq(z, levels)        # z [..., d], d == len(levels)

half_l = (L - 1)(1 + 1e-3) / 2; offset = 0.5 for even L else 0; shift = atanh(offset / half_l);
codes = round_half_even(tanh(z + shift) * half_l - offset) / (L // 2), straight-through: d codes / dz =
half_l (1 - tanh^2(z + shift)) / (L // 2). indices (int32) = sum((codes * L//2 + L//2) * basis), basis =
cumprod([1] + levels[:-1]) (first dimension least significant). A NaN in a row gives index -1.
Differences from the anchor: fp16/bf16 inputs return fp32 codes (the anchor casts back and, with
force_quantization_f32=False, rounds in bf16 where half the codes collapse).
"""
from __future__ import annotations

import torch

from .._args import fcheck, fcheck_floating, fcheck_type
from .._loader import LIMITS
from .._register import register_autograd, register_fake
from ._qcommon import acc_dtype, check_float, check_index, check_levels

__all__ = ["fsq", "fsq_indices_to_codes", "fsq_codebook_size"]

_ops = torch.ops.imtok_cuda
_MAX_DIMS = LIMITS["fsq_max_dims"]


def fsq_codebook_size(levels) -> int:
    n = 1
    for L in check_levels(levels):
        n *= L
    return n


def fsq(z: torch.Tensor, levels) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize z [..., d] with per-dimension levels. Returns (codes [..., d] fp32 (fp64 for fp64 z),
    indices [...] int32). Differentiable in z (straight-through through the bound)."""
    check_float(z, "z")
    levels = check_levels(levels)
    if z.dim() < 1 or z.shape[-1] != len(levels):
        raise ValueError(f"z.shape[-1] must equal len(levels) = {len(levels)}, got shape {tuple(z.shape)}")
    return _ops.vq_fsq(z, levels)


def fsq_indices_to_codes(indices: torch.Tensor, levels) -> torch.Tensor:
    """indices [...] (int32/int64, in [0, prod(levels))) -> codes [..., d] float32."""
    check_index(indices, "indices")
    levels = check_levels(levels)
    return _ops.vq_fsq_indices_to_codes(indices, levels)


# ---- fake kernels and autograd ------------------------------------------------------------------------


def _fake_levels(levels):
    """csrc/vq/quantizers_common.h make_fsq_params restated."""
    fcheck(len(levels) >= 1, "levels must not be empty")
    fcheck(len(levels) <= _MAX_DIMS, lambda: "levels may have at most %d entries, got %d" % (_MAX_DIMS, len(levels)))
    basis = 1
    for j, L in enumerate(levels):
        fcheck(2 <= L <= 65536, lambda: "levels[%d] must be in [2, 65536], got %s" % (j, L))
        basis *= L
        fcheck(basis <= 2**31 - 1, lambda: "prod(levels) must fit in int32 (indices are int32)")


def _fake_fsq_input(z, levels, name="z"):
    _fake_levels(levels)
    fcheck_floating(z, name)
    fcheck(z.dim() >= 1 and z.shape[-1] == len(levels), lambda: "%s.shape[-1] must equal len(levels) = %d, got "
           "shape %s" % (name, len(levels), tuple(z.shape)))


@register_fake("vq_fsq")
def _fsq_fake(z, levels):
    _fake_fsq_input(z, levels)
    return z.new_empty(z.shape, dtype=acc_dtype(z.dtype)), z.new_empty(z.shape[:-1], dtype=torch.int32)


@register_fake("vq_fsq_backward")
def _fsq_backward_fake(grad_codes, z, levels):
    _fake_fsq_input(z, levels)
    fcheck_floating(grad_codes, "grad_codes")
    fcheck(tuple(grad_codes.shape) == tuple(z.shape), lambda: "grad_codes must have the shape of z")
    return torch.empty_like(z, memory_format=torch.contiguous_format)


@register_fake("vq_fsq_indices_to_codes")
def _fsq_i2c_fake(indices, levels):
    _fake_levels(levels)
    fcheck_type(indices.dtype in (torch.int32, torch.int64), lambda: "indices must be int64 or int32, got %s" % (
        indices.dtype,))
    return indices.new_empty((*indices.shape, len(levels)), dtype=torch.float32)


def _fsq_setup(ctx, inputs, output):
    z, levels = inputs
    ctx.save_for_backward(z)
    ctx.levels = list(levels)


def _fsq_backward(ops, ctx, grad_codes, grad_indices):
    (z,) = ctx.saved_tensors
    if grad_codes is None:
        return None, None
    return ops.vq_fsq_backward(grad_codes, z, ctx.levels), None


register_autograd("vq_fsq", _fsq_backward, _fsq_setup)
