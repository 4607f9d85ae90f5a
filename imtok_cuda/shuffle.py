"""Token-Shuffle with fused kernels.

token_shuffle:   [B, (h s)(w s), D] -> [B, h w, s*s*D]   ('b (h s1 w s2) d -> b (h w) (s1 s2 d)')
token_unshuffle: the inverse. h, w are the coarse grid (after shuffling).
shuffle_linear(x, h, w, s, weight, bias)   = Linear(token_shuffle(x))      (permutation folded into the GEMM rows)
linear_unshuffle(x, h, w, s, weight, bias) = token_unshuffle(Linear(x))
ShuffleLinear / LinearUnshuffle: the nn.Module forms (the Token-Shuffle MLPs s^2 D -> D and back).
"""
from typing import Optional

import torch
from torch import nn

from . import _loader  # noqa: F401

_ops = torch.ops.imtok_cuda

__all__ = ["token_shuffle", "token_unshuffle", "shuffle_linear", "linear_unshuffle", "ShuffleLinear",
           "LinearUnshuffle"]


def token_shuffle(x: torch.Tensor, h: int, w: int, s: int) -> torch.Tensor:
    return _ops.shuffle_token_shuffle(x, int(h), int(w), int(s))


def token_unshuffle(x: torch.Tensor, h: int, w: int, s: int) -> torch.Tensor:
    return _ops.shuffle_token_unshuffle(x, int(h), int(w), int(s))


def shuffle_linear(x, h, w, s, weight, bias=None):
    return _ops.shuffle_linear(x, int(h), int(w), int(s), weight, bias)


def linear_unshuffle(x, h, w, s, weight, bias=None):
    return _ops.shuffle_linear_unshuffle(x, int(h), int(w), int(s), weight, bias)


# ---- fake kernels -----------------------------------------------------------------------------------------
@torch.library.register_fake("imtok_cuda::shuffle_token_shuffle")
def _(x, h, w, s):
    return x.new_empty((x.shape[0], h * w, s * s * x.shape[2]))


@torch.library.register_fake("imtok_cuda::shuffle_token_unshuffle")
def _(x, h, w, s):
    return x.new_empty((x.shape[0], h * w * s * s, x.shape[2] // (s * s)))


@torch.library.register_fake("imtok_cuda::shuffle_linear")
def _(x, h, w, s, weight, bias=None):
    return x.new_empty((x.shape[0], h * w, weight.shape[0]))


@torch.library.register_fake("imtok_cuda::shuffle_linear_unshuffle")
def _(x, h, w, s, weight, bias=None):
    return x.new_empty((x.shape[0], h * w * s * s, weight.shape[0] // (s * s)))


# ---- autograd: each op's backward is the other permutation (plus GEMMs for the fused Linear forms) ---------
def _perm_setup(ctx, inputs, output):
    _, ctx.h, ctx.w, ctx.s = inputs


def _shuffle_bwd(ctx, g):
    return _ops.shuffle_token_unshuffle(g, ctx.h, ctx.w, ctx.s), None, None, None


def _unshuffle_bwd(ctx, g):
    return _ops.shuffle_token_shuffle(g, ctx.h, ctx.w, ctx.s), None, None, None


torch.library.register_autograd("imtok_cuda::shuffle_token_shuffle", _shuffle_bwd, setup_context=_perm_setup)
torch.library.register_autograd("imtok_cuda::shuffle_token_unshuffle", _unshuffle_bwd, setup_context=_perm_setup)


def _lin_setup(ctx, inputs, output):
    x, ctx.h, ctx.w, ctx.s, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight)


def _shuffle_linear_bwd(ctx, g):
    x, weight = ctx.saved_tensors
    h, w, s = ctx.h, ctx.w, ctx.s
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:  # unshuffle(g @ W): the mirrored fused op with W^T
        gx = _ops.shuffle_linear_unshuffle(g, h, w, s, weight.t().contiguous(), None)
    if ctx.needs_input_grad[4]:
        xs = _ops.shuffle_token_shuffle(x, h, w, s)
        gw = g.reshape(-1, g.shape[-1]).t() @ xs.reshape(-1, xs.shape[-1])
    if ctx.has_bias and ctx.needs_input_grad[5]:
        gb = g.reshape(-1, g.shape[-1]).sum(0)
    return gx, None, None, None, gw, gb


def _linear_unshuffle_bwd(ctx, g):
    x, weight = ctx.saved_tensors
    h, w, s = ctx.h, ctx.w, ctx.s
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:  # shuffle(g) @ W: the mirrored fused op with W^T
        gx = _ops.shuffle_linear(g, h, w, s, weight.t().contiguous(), None)
    if ctx.needs_input_grad[4] or (ctx.has_bias and ctx.needs_input_grad[5]):
        gs = _ops.shuffle_token_shuffle(g, h, w, s).reshape(-1, weight.shape[0])
        if ctx.needs_input_grad[4]:
            gw = gs.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[5]:
            gb = gs.sum(0)
    return gx, None, None, None, gw, gb


torch.library.register_autograd("imtok_cuda::shuffle_linear", _shuffle_linear_bwd, setup_context=_lin_setup)
torch.library.register_autograd("imtok_cuda::shuffle_linear_unshuffle", _linear_unshuffle_bwd,
                                setup_context=_lin_setup)


class ShuffleLinear(nn.Module):
    """Token shuffle (factor s) followed by Linear(s*s*dim -> out_features), fused."""

    def __init__(self, dim: int, out_features: int, s: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.s = s
        self.linear = nn.Linear(s * s * dim, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x: [B, (h s)(w s), dim] -> [B, h w, out_features]; h, w: the coarse grid."""
        return shuffle_linear(x, h, w, self.s, self.linear.weight, self.linear.bias)


class LinearUnshuffle(nn.Module):
    """Linear(in_features -> s*s*dim) followed by token unshuffle (factor s), fused."""

    def __init__(self, in_features: int, dim: int, s: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.s = s
        self.linear = nn.Linear(in_features, s * s * dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x: [B, h w, in_features] -> [B, (h s)(w s), dim]."""
        return linear_unshuffle(x, h, w, self.s, self.linear.weight, self.linear.bias)
