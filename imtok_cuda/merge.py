"""Token merging (ToMe, tomesd) with fused kernels.

The matching ops return a *plan* of int64 index tensors in the upstream index spaces (see
imtok_cuda.reference.merge); the application ops run one deterministic pass over each output row's member list
(its destination token and, in plan order, the sources merged into it): no atomics, no score matrix.

Drop-in API, same calling convention as the upstream code:
    merge, unmerge = bipartite_soft_matching(metric, r, class_token, distill_token)      # ToMe
    x = merge(x, mode="mean"); x, size = merge_wavg(merge, x, size); source = merge_source(merge, x, source)
    merge, unmerge = bipartite_soft_matching_random2d(metric, w, h, sx, sy, r, no_rand, generator)  # tomesd
Op level: tome_match / random2d_match -> MergePlan; merge_apply, merge_wavg_plan, merge_unmerge.
"""
from typing import Callable, NamedTuple, Optional, Tuple

import torch

from . import _loader  # noqa: F401  (loads the extension)
from ._args import as_bool, as_int, checked_mul, fcheck, fcheck_dim, fcheck_dtype, fcheck_floating
from ._register import register_autograd, register_fake

_ops = torch.ops.imtok_cuda

__all__ = [
    "MergePlan", "tome_match", "random2d_split", "random2d_match", "merge_apply", "merge_wavg_plan",
    "merge_unmerge", "bipartite_soft_matching", "bipartite_soft_matching_random2d", "merge_wavg",
    "merge_source", "do_nothing",
]


class MergePlan(NamedTuple):
    src_idx: torch.Tensor
    dst_idx: torch.Tensor
    unm_idx: torch.Tensor
    a_idx: Optional[torch.Tensor] = None
    b_idx: Optional[torch.Tensor] = None
    distill_token: bool = False

    @property
    def r(self) -> int:
        return self.src_idx.shape[1]


def do_nothing(x: torch.Tensor, mode: Optional[str] = None) -> torch.Tensor:
    return x


# ---------------------------------------------------------------------------------------------------------
# ops: matching
# ---------------------------------------------------------------------------------------------------------
def _check_metric(metric):
    if not isinstance(metric, torch.Tensor) or metric.dim() != 3:
        raise ValueError("metric must be a [B, T, C] tensor, got %s" % (getattr(metric, "shape", type(metric)),))
    if not metric.is_floating_point():
        raise TypeError("metric must be a floating-point tensor, got %s" % metric.dtype)


def tome_match(metric: torch.Tensor, r: int, class_token: bool = False, distill_token: bool = False) -> MergePlan:
    """ToMe's bipartite soft matching as one fused op (normalize, a.b^T row max/argmax, ordering)."""
    _check_metric(metric)
    class_token, distill_token = as_bool(class_token, "class_token"), as_bool(distill_token, "distill_token")
    src, dst, unm = _ops.merge_tome_match(metric, as_int(r, "r"), class_token, distill_token)
    return MergePlan(src, dst, unm, None, None, distill_token)


def random2d_split(rand_idx: torch.Tensor, h: int, w: int, sx: int, sy: int):
    """(a_idx, b_idx) from tomesd's destination draw. On CPU the kernel reproduces torch's CPU argsort order of
    the -1/0 buffer (an unstable introsort); on other devices torch's own argsort on that device is used, so the
    order is what tomesd gets there."""
    h, w, sx, sy = as_int(h, "h"), as_int(w, "w"), as_int(sx, "sx"), as_int(sy, "sy")
    if rand_idx.device.type == "cpu":
        return _ops.merge_random2d_split(rand_idx, h, w, sx, sy)
    _split_dims(rand_idx, h, w, sx, sy)
    hsy, wsx = h // sy, w // sx
    cells = torch.zeros(hsy, wsx, sy * sx, device=rand_idx.device, dtype=torch.int64).scatter_(2, rand_idx, -1)
    buf = torch.zeros(h, w, device=rand_idx.device, dtype=torch.int64)  # -1 at each cell's destination
    buf[: hsy * sy, : wsx * sx] = cells.view(hsy, wsx, sy, sx).transpose(1, 2).reshape(hsy * sy, wsx * sx)
    order = buf.reshape(1, -1, 1).argsort(dim=1)[0, :, 0]  # tomesd's call, so its (unstable) order on this device
    return order[hsy * wsx:], order[: hsy * wsx]


def random2d_match(metric: torch.Tensor, a_idx: torch.Tensor, b_idx: torch.Tensor, r: int) -> MergePlan:
    _check_metric(metric)
    src, dst, unm = _ops.merge_random2d_match(metric, a_idx, b_idx, as_int(r, "r"))
    return MergePlan(src, dst, unm, a_idx, b_idx, False)


def _fake_metric(metric):
    fcheck_floating(metric, "metric")
    fcheck_dim(metric, 3, "metric")


@register_fake("merge_tome_match")
def _(metric, r, class_token=False, distill_token=False):
    _fake_metric(metric)
    B, T, _ = metric.shape
    rr = max(0, min(r, (T - int(class_token) - int(distill_token)) // 2))
    na = (T + 1) // 2
    e = lambda n: metric.new_empty((B, n), dtype=torch.int64)  # noqa: E731
    return e(rr), e(rr), e(na - rr)


def _split_dims(rand_idx, h, w, sx, sy):
    """csrc/merge/merge_plan.h check_random2d_split_args restated."""
    fcheck(h > 0 and w > 0, lambda: "h and w must be positive, got h=%s, w=%s" % (h, w))
    fcheck(sx > 0 and sy > 0, lambda: "sx and sy must be positive, got sx=%s, sy=%s" % (sx, sy))
    fcheck_dtype(rand_idx, torch.int64, "rand_idx")
    hsy, wsx = h // sy, w // sx
    n = checked_mul(h, w, "h*w")
    nd = checked_mul(hsy, wsx, "(h // sy)*(w // sx)")
    checked_mul(sx, sy, "sx*sy")
    fcheck(rand_idx.numel() == nd and rand_idx.dim() >= 2 and rand_idx.shape[0] == hsy and rand_idx.shape[1] == wsx,
           lambda: "rand_idx must have shape [h // sy, w // sx(, 1)] = [%s, %s], got %s" % (
               hsy, wsx, tuple(rand_idx.shape)))
    fcheck(n <= 2**40, lambda: "h*w = %s tokens is too large" % n)
    return n, nd


@register_fake("merge_random2d_split")
def _(rand_idx, h, w, sx, sy):
    n, nd = _split_dims(rand_idx, h, w, sx, sy)
    return rand_idx.new_empty((n - nd,)), rand_idx.new_empty((nd,))


def _fake_split(a_idx, b_idx):
    fcheck_dtype(a_idx, torch.int64, "a_idx")
    fcheck_dtype(b_idx, torch.int64, "b_idx")
    fcheck_dim(a_idx, 1, "a_idx")
    fcheck_dim(b_idx, 1, "b_idx")


@register_fake("merge_random2d_match")
def _(metric, a_idx, b_idx, r):
    _fake_metric(metric)
    _fake_split(a_idx, b_idx)
    B, T = metric.shape[0], metric.shape[1]
    na, nb = a_idx.shape[0], b_idx.shape[0]
    fcheck(na + nb == T, lambda: "a_idx and b_idx must split the %s tokens of metric, got %s + %s" % (T, na, nb))
    rr = max(0, min(r, na))
    e = lambda n: metric.new_empty((B, n), dtype=torch.int64)  # noqa: E731
    return e(rr), e(rr), e(na - rr)


# ---------------------------------------------------------------------------------------------------------
# ops: applying a plan
# ---------------------------------------------------------------------------------------------------------
def _plan_dims(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill=False, tokens=None, merged_rows=None,
               xname="x", yname="y"):
    """csrc/merge/merge_plan.h (check_plan + resolve_tokens / resolve_merged_rows) restated for the fake
    kernels: shapes only (index values are checked by the kernels' launchers, which fake tensors cannot do).
    Returns (B, T, Na, Nb, r, U)."""
    for t, n in ((src_idx, "src_idx"), (dst_idx, "dst_idx"), (unm_idx, "unm_idx")):
        fcheck_dtype(t, torch.int64, n)
        fcheck_dim(t, 2, n)
    B, r = src_idx.shape
    fcheck(tuple(dst_idx.shape) == tuple(src_idx.shape), lambda: "dst_idx must have the shape of src_idx %s, got %s"
           % (tuple(src_idx.shape), tuple(dst_idx.shape)))
    fcheck(unm_idx.shape[0] == B, lambda: "unm_idx.shape[0] must be %s, got shape %s" % (B, tuple(unm_idx.shape)))
    U = unm_idx.shape[1]
    Na = U + r
    fcheck((a_idx is None) == (b_idx is None),
           "a_idx and b_idx must be given together (tomesd) or both be None (ToMe)")
    if a_idx is not None:
        _fake_split(a_idx, b_idx)
        fcheck(a_idx.shape[0] == Na, lambda: "a_idx must have %s entries (src_idx + unm_idx), got %s" % (
            Na, a_idx.shape[0]))
        Nb = b_idx.shape[0]
        T = Na + Nb
        if tokens is not None:
            fcheck(tokens == T, lambda: "%s has %s tokens but the plan covers %s" % (xname, tokens, T))
        else:
            fcheck(merged_rows == U + Nb, lambda: "%s has %s rows but the plan merges to %s" % (
                yname, merged_rows, U + Nb))
    elif tokens is not None:
        fcheck((tokens + 1) // 2 == Na, lambda: "%s has %s tokens but the plan has %s source-set rows "
               "(src_idx + unm_idx); expected ceil(T / 2)" % (xname, tokens, Na))
        T, Nb = tokens, tokens // 2
    else:
        Nb = merged_rows - U
        fcheck(Nb == Na or Nb == Na - 1, lambda: "%s has %s rows, which does not fit a plan with %s unmerged and "
               "%s source-set rows" % (yname, merged_rows, U, Na))
        T = Na + Nb
    fcheck(not distill or U >= 1, "distill_token needs at least one unmerged row in unm_idx")
    fcheck(Nb >= 1 or r == 0, "a plan with merges needs at least one destination")
    return B, T, Na, Nb, r, U


def _fake_x(x, name, B):
    fcheck_floating(x, name)
    fcheck_dim(x, 3, name)
    fcheck(x.shape[0] == B, lambda: "%s.shape[0] must be the plan's batch %s, got shape %s" % (
        name, B, tuple(x.shape)))


_MODE_CODES = {"sum": 0, "mean": 1, "amax": 2}


def _fake_mode(mode):
    fcheck(mode in _MODE_CODES, lambda: "mode must be 'sum', 'mean' or 'amax', got '%s'" % (mode,))


@register_fake("merge_apply")
def _(x, src_idx, dst_idx, unm_idx, a_idx=None, b_idx=None, mode="mean", distill_token=False):
    _fake_mode(mode)
    fcheck_floating(x, "x")
    fcheck_dim(x, 3, "x")
    B, T, Na, Nb, r, U = _plan_dims(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token, tokens=x.shape[1])
    _fake_x(x, "x", B)
    return x.new_empty((B, U + Nb, x.shape[2]))


@register_fake("merge_apply_backward")
def _(grad, x, out, src_idx, dst_idx, unm_idx, a_idx, b_idx, mode, distill_token):
    _fake_mode(mode)
    fcheck_floating(x, "x")
    fcheck_dim(x, 3, "x")
    B, T, Na, Nb, r, U = _plan_dims(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token, tokens=x.shape[1])
    want = (B, U + Nb, x.shape[2])
    fcheck(grad.dim() == 3 and tuple(grad.shape) == want, lambda: "grad must have shape %s, got %s" % (
        list(want), tuple(grad.shape)))
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@register_fake("merge_wavg")
def _(x, size, src_idx, dst_idx, unm_idx, a_idx=None, b_idx=None, distill_token=False):
    fcheck_floating(x, "x")
    fcheck_dim(x, 3, "x")
    B, T, Na, Nb, r, U = _plan_dims(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token, tokens=x.shape[1])
    _fake_x(x, "x", B)
    if size is not None:
        torch._check_type(size.dtype == x.dtype, lambda: "size and x must have the same dtype")
        fcheck(tuple(size.shape) == (B, T, 1), lambda: "size must have shape [%s, %s, 1], got %s" % (
            B, T, tuple(size.shape)))
    n = U + Nb
    return x.new_empty((B, n, x.shape[2])), x.new_empty((B, n, 1))


@register_fake("merge_wavg_backward")
def _(grad_x, grad_size, x, size, out_x, out_size, src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token):
    fcheck_floating(x, "x")
    fcheck_dim(x, 3, "x")
    B, T, Na, Nb, r, U = _plan_dims(src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token, tokens=x.shape[1])
    want = (B, U + Nb, x.shape[2])
    fcheck(tuple(grad_x.shape) == want, lambda: "grad_x must have shape %s, got %s" % (list(want),
                                                                                   tuple(grad_x.shape)))
    return x.new_empty((B, T, x.shape[2])), x.new_empty((B, T, 1))


@register_fake("merge_unmerge")
def _(y, src_idx, dst_idx, unm_idx, a_idx=None, b_idx=None):
    fcheck_floating(y, "y")
    fcheck_dim(y, 3, "y")
    B, T, Na, Nb, r, U = _plan_dims(src_idx, dst_idx, unm_idx, a_idx, b_idx, merged_rows=y.shape[1])
    _fake_x(y, "y", B)
    return y.new_empty((B, T, y.shape[2]))


def _apply_setup(ctx, inputs, output):
    x, src_idx, dst_idx, unm_idx, a_idx, b_idx, mode, distill_token = inputs
    ctx.mode, ctx.distill = mode, distill_token
    ctx.save_for_backward(x if mode == "amax" else None, output if mode == "amax" else None,
                          src_idx, dst_idx, unm_idx, a_idx, b_idx)
    ctx.x_meta = (x.shape, x.dtype, x.device)


def _apply_backward(ops, ctx, grad):
    x, out, src_idx, dst_idx, unm_idx, a_idx, b_idx = ctx.saved_tensors
    if x is None:
        shape, dtype, device = ctx.x_meta
        x = torch.empty(shape, dtype=dtype, device=device)
        out = grad
    gx = ops.merge_apply_backward(grad, x, out, src_idx, dst_idx, unm_idx, a_idx, b_idx, ctx.mode, ctx.distill)
    return gx, None, None, None, None, None, None, None


register_autograd("merge_apply", _apply_backward, _apply_setup)


def _wavg_setup(ctx, inputs, output):
    x, size, src_idx, dst_idx, unm_idx, a_idx, b_idx, distill_token = inputs
    ctx.distill = distill_token
    ctx.has_size = size is not None
    ctx.save_for_backward(x, size, output[0], output[1], src_idx, dst_idx, unm_idx, a_idx, b_idx)


def _wavg_backward(ops, ctx, grad_x, grad_size):
    x, size, out_x, out_size, src_idx, dst_idx, unm_idx, a_idx, b_idx = ctx.saved_tensors
    if grad_x is None:
        grad_x = torch.zeros_like(out_x)
    gx, gs = ops.merge_wavg_backward(grad_x, grad_size, x, size, out_x, out_size, src_idx, dst_idx, unm_idx,
                                      a_idx, b_idx, ctx.distill)
    return gx, (gs if ctx.has_size else None), None, None, None, None, None, None


register_autograd("merge_wavg", _wavg_backward, _wavg_setup)


def _unmerge_setup(ctx, inputs, output):
    y, src_idx, dst_idx, unm_idx, a_idx, b_idx = inputs
    ctx.save_for_backward(src_idx, dst_idx, unm_idx, a_idx, b_idx)


def _unmerge_backward(ops, ctx, grad):
    src_idx, dst_idx, unm_idx, a_idx, b_idx = ctx.saved_tensors
    # unmerge copies each output row to its members; its adjoint sums the members: a "sum" merge.
    gy = ops.merge_apply(grad, src_idx, dst_idx, unm_idx, a_idx, b_idx, "sum", False)
    return gy, None, None, None, None, None


register_autograd("merge_unmerge", _unmerge_backward, _unmerge_setup)


_MODES = ("sum", "mean", "amax")


def merge_apply(x: torch.Tensor, plan: MergePlan, mode: str = "mean") -> torch.Tensor:
    """ToMe's merge(x, mode) for a plan: [unm..., dst...] (distill: [unm0, dst0, unm1.., dst1..])."""
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError("mode must be one of %s, got %r" % (_MODES, mode))
    return _ops.merge_apply(x, plan.src_idx, plan.dst_idx, plan.unm_idx, plan.a_idx, plan.b_idx, mode,
                            plan.distill_token)


def merge_wavg_plan(x: torch.Tensor, plan: MergePlan, size: Optional[torch.Tensor] = None):
    """Size-weighted average merge in one pass: (x_out, size_out); size defaults to ones."""
    return _ops.merge_wavg(x, size, plan.src_idx, plan.dst_idx, plan.unm_idx, plan.a_idx, plan.b_idx,
                           plan.distill_token)


def merge_unmerge(y: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """Upstream unmerge: every token gets its output row back (assumes the [unm, dst] layout, as upstream)."""
    return _ops.merge_unmerge(y, plan.src_idx, plan.dst_idx, plan.unm_idx, plan.a_idx, plan.b_idx)


# ---------------------------------------------------------------------------------------------------------
# upstream calling convention
# ---------------------------------------------------------------------------------------------------------
class _Merge:
    """merge(x, mode="mean") callable carrying its plan, so merge_wavg/merge_source can use fused kernels."""

    def __init__(self, plan: MergePlan):
        self.plan = plan

    def __call__(self, x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        return merge_apply(x, self.plan, mode)


class _Unmerge:
    def __init__(self, plan: MergePlan):
        self.plan = plan

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return merge_unmerge(x, self.plan)


def bipartite_soft_matching(metric: torch.Tensor, r: int, class_token: bool = False,
                            distill_token: bool = False) -> Tuple[Callable, Callable]:
    """ToMe's bipartite_soft_matching with fused kernels: (merge, unmerge), identity when the clamped r <= 0."""
    _check_metric(metric)
    r = as_int(r, "r")
    if min(r, (metric.shape[1] - int(bool(class_token)) - int(bool(distill_token))) // 2) <= 0:  # ToMe's clamp
        return do_nothing, do_nothing
    plan = tome_match(metric, r, class_token, distill_token)
    return _Merge(plan), _Unmerge(plan)


def bipartite_soft_matching_random2d(metric: torch.Tensor, w: int, h: int, sx: int, sy: int, r: int,
                                     no_rand: bool = False, generator: Optional[torch.Generator] = None):
    """tomesd 0.1.3's bipartite_soft_matching_random2d with fused kernels (same random draw from `generator`)."""
    _check_metric(metric)
    w, h, sx, sy, r = as_int(w, "w"), as_int(h, "h"), as_int(sx, "sx"), as_int(sy, "sy"), as_int(r, "r")
    B, N, _ = metric.shape
    if N != h * w:
        raise ValueError("metric has %d tokens but h * w = %d" % (N, h * w))
    if sx <= 0 or sy <= 0 or sx > w or sy > h:
        raise ValueError("sx and sy must be in [1, w] and [1, h], got sx=%d, sy=%d" % (sx, sy))
    if r <= 0:
        return do_nothing, do_nothing
    cells = (h // sy, w // sx, 1)  # tomesd's draw of each cell's destination
    if no_rand:
        rand_idx = torch.zeros(cells, device=metric.device, dtype=torch.int64)
    else:
        generator = torch.default_generator if generator is None else generator
        rand_idx = torch.randint(sy * sx, cells, device=generator.device, generator=generator).to(metric.device)
    a_idx, b_idx = random2d_split(rand_idx, h, w, sx, sy)
    plan = random2d_match(metric, a_idx, b_idx, r)
    return _Merge(plan), _Unmerge(plan)


def merge_wavg(merge: Callable, x: torch.Tensor, size: Optional[torch.Tensor] = None):
    """ToMe's merge_wavg(merge, x, size) -> (x, size); one fused pass when `merge` comes from this module."""
    plan = getattr(merge, "plan", None)
    if plan is None:  # do_nothing or a foreign merge: ToMe's two sum-merges
        size = torch.ones_like(x[..., 0, None]) if size is None else size
        merged_size = merge(size, mode="sum")
        return merge(x * size, mode="sum") / merged_size, merged_size
    return merge_wavg_plan(x, plan, size)


def merge_source(merge: Callable, x: torch.Tensor, source: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ToMe's merge_source: amax-merge of the token/source adjacency (identity [B, T, T] to start)."""
    if source is None:
        n, t, _ = x.shape
        source = torch.eye(t, device=x.device)[None, ...].expand(n, t, t)
    return merge(source, mode="amax")
