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
from ._args import as_int, checked_mul, fcheck, fcheck_dim, fcheck_floating, fcheck_type
from ._register import register_autograd, register_fake

_ops = torch.ops.imtok_cuda

__all__ = ["token_shuffle", "token_unshuffle", "shuffle_linear", "linear_unshuffle", "ShuffleLinear",
           "LinearUnshuffle"]


def _grid(h, w, s):
    return as_int(h, "h"), as_int(w, "w"), as_int(s, "s")


def token_shuffle(x: torch.Tensor, h: int, w: int, s: int) -> torch.Tensor:
    return _ops.shuffle_token_shuffle(x, *_grid(h, w, s))


def token_unshuffle(x: torch.Tensor, h: int, w: int, s: int) -> torch.Tensor:
    return _ops.shuffle_token_unshuffle(x, *_grid(h, w, s))


def shuffle_linear(x, h, w, s, weight, bias=None):
    return _ops.shuffle_linear(x, *_grid(h, w, s), weight, bias)


def linear_unshuffle(x, h, w, s, weight, bias=None):
    return _ops.shuffle_linear_unshuffle(x, *_grid(h, w, s), weight, bias)


# ---- fake kernels: csrc/shuffle/shuffle_checks.h (check_shuffle_args) restated -----------------------------
_TOKEN_SHUFFLE, _TOKEN_UNSHUFFLE, _SHUFFLE_LINEAR, _LINEAR_UNSHUFFLE = range(4)


def _check_linear(x, weight, bias, kin):
    fcheck_floating(weight, "weight")
    fcheck_dim(weight, 2, "weight")
    fcheck_type(weight.dtype == x.dtype, lambda: "x and weight must have the same dtype, got %s and %s" % (
        x.dtype, weight.dtype))
    fcheck(weight.shape[1] == kin, lambda: "weight.shape[1] must be the input features %s, got shape %s" % (
        kin, tuple(weight.shape)))
    if bias is not None:
        fcheck_type(bias.dtype == x.dtype, lambda: "x and bias must have the same dtype")
        fcheck_dim(bias, 1, "bias")
        fcheck(bias.shape[0] == weight.shape[0], lambda: "bias must have %s entries, got shape %s" % (
            weight.shape[0], tuple(bias.shape)))


def _dims(x, h, w, s, op, weight=None, bias=None):
    """(B, Q, S, T, D, N) after the checks of check_shuffle_args."""
    fcheck(h > 0 and w > 0, lambda: "h and w must be positive, got h=%s, w=%s" % (h, w))
    fcheck(s > 0, lambda: "s must be positive, got %s" % s)
    fcheck_floating(x, "x")
    fcheck_dim(x, 3, "x")
    B = x.shape[0]
    S = checked_mul(s, s, "s*s")
    Q = checked_mul(h, w, "h*w")
    T = checked_mul(Q, S, "(h s)(w s) = h*w*s*s")
    N = None
    if op in (_TOKEN_SHUFFLE, _SHUFFLE_LINEAR):
        fcheck(x.shape[1] == T, lambda: "x.shape[1] must be (h s)(w s) = %s tokens, got shape %s" % (
            T, tuple(x.shape)))
        D = x.shape[2]
        K = checked_mul(S, D, "s*s*x.shape[2]")
        if op == _SHUFFLE_LINEAR:
            _check_linear(x, weight, bias, K)
            N = weight.shape[0]
    else:
        fcheck(x.shape[1] == Q, lambda: "x.shape[1] must be h w = %s tokens, got shape %s" % (Q, tuple(x.shape)))
        if op == _TOKEN_UNSHUFFLE:
            fcheck(x.shape[2] % S == 0, lambda: "x.shape[2] must be divisible by s*s = %s, got shape %s" % (
                S, tuple(x.shape)))
            D = x.shape[2] // S
        else:
            _check_linear(x, weight, bias, x.shape[2])
            N = weight.shape[0]
            fcheck(N % S == 0, lambda: "weight.shape[0] must be divisible by s*s = %s, got shape %s" % (
                S, tuple(weight.shape)))
            D = N // S
    if N is not None:
        checked_mul(checked_mul(B, Q, "x.shape[0]*h*w"), N, "the output size x.shape[0]*h*w*weight.shape[0]")
    return B, Q, S, T, D, N


@register_fake("shuffle_token_shuffle")
def _(x, h, w, s):
    B, Q, S, T, D, _ = _dims(x, h, w, s, _TOKEN_SHUFFLE)
    return x.new_empty((B, Q, S * D))


@register_fake("shuffle_token_unshuffle")
def _(x, h, w, s):
    B, Q, S, T, D, _ = _dims(x, h, w, s, _TOKEN_UNSHUFFLE)
    return x.new_empty((B, T, D))


@register_fake("shuffle_linear")
def _(x, h, w, s, weight, bias=None):
    B, Q, S, T, D, N = _dims(x, h, w, s, _SHUFFLE_LINEAR, weight, bias)
    return x.new_empty((B, Q, N))


@register_fake("shuffle_linear_unshuffle")
def _(x, h, w, s, weight, bias=None):
    B, Q, S, T, D, N = _dims(x, h, w, s, _LINEAR_UNSHUFFLE, weight, bias)
    return x.new_empty((B, T, D))


# ---- autograd: each op's backward is the other permutation (plus GEMMs for the fused Linear forms) ---------
def _perm_setup(ctx, inputs, output):
    _, ctx.h, ctx.w, ctx.s = inputs


def _shuffle_bwd(ops, ctx, g):
    return ops.shuffle_token_unshuffle(g, ctx.h, ctx.w, ctx.s), None, None, None


def _unshuffle_bwd(ops, ctx, g):
    return ops.shuffle_token_shuffle(g, ctx.h, ctx.w, ctx.s), None, None, None


register_autograd("shuffle_token_shuffle", _shuffle_bwd, _perm_setup)
register_autograd("shuffle_token_unshuffle", _unshuffle_bwd, _perm_setup)


def _lin_setup(ctx, inputs, output):
    x, ctx.h, ctx.w, ctx.s, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight)


def _shuffle_linear_bwd(ops, ctx, g):
    x, weight = ctx.saved_tensors
    h, w, s = ctx.h, ctx.w, ctx.s
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:  # unshuffle(g @ W): the mirrored fused op with W^T
        gx = ops.shuffle_linear_unshuffle(g, h, w, s, weight.t().contiguous(), None)
    if ctx.needs_input_grad[4]:
        xs = ops.shuffle_token_shuffle(x, h, w, s)
        gw = g.reshape(-1, g.shape[-1]).t() @ xs.reshape(-1, xs.shape[-1])
    if ctx.has_bias and ctx.needs_input_grad[5]:
        gb = g.reshape(-1, g.shape[-1]).sum(0)
    return gx, None, None, None, gw, gb


def _linear_unshuffle_bwd(ops, ctx, g):
    x, weight = ctx.saved_tensors
    h, w, s = ctx.h, ctx.w, ctx.s
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:  # shuffle(g) @ W: the mirrored fused op with W^T
        gx = ops.shuffle_linear(g, h, w, s, weight.t().contiguous(), None)
    if ctx.needs_input_grad[4] or (ctx.has_bias and ctx.needs_input_grad[5]):
        gs = ops.shuffle_token_shuffle(g, h, w, s).reshape(-1, weight.shape[0])
        if ctx.needs_input_grad[4]:
            gw = gs.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[5]:
            gb = gs.sum(0)
    return gx, None, None, None, gw, gb


register_autograd("shuffle_linear", _shuffle_linear_bwd, _lin_setup)
register_autograd("shuffle_linear_unshuffle", _linear_unshuffle_bwd, _lin_setup)


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
