"""Argument coercion shared by the Python wrappers: the same rules as the raw ops (an int stays an int, a float
parameter must be finite), never a silent int() of a float or a string.

as_int(v, name):   int, bool-free integer types (numpy integers, torch.SymInt, 0-dim integer tensors) -> int;
                   anything else (float, str, None, ...) -> TypeError naming the argument.
as_float(v, name): int or float (numpy floating, SymFloat, 0-dim tensors) -> float; non-finite -> ValueError
                   naming the argument (finite=False lets inf / NaN through where a parameter may be infinite).
"""
import math
import numbers
import operator

import torch

__all__ = ["as_int", "as_float", "as_bool", "check_int_range"]


def as_int(v, name: str) -> int:
    if isinstance(v, bool):
        raise TypeError("%s must be an integer, got bool %r" % (name, v))
    if isinstance(v, torch.SymInt):
        return v
    if isinstance(v, torch.Tensor):
        if v.dim() == 0 and not v.is_floating_point() and not v.is_complex() and v.dtype != torch.bool:
            return int(v.item())
        raise TypeError("%s must be an integer, got a tensor of dtype %s and shape %s" % (name, v.dtype,
                                                                                        tuple(v.shape)))
    if isinstance(v, numbers.Integral):
        return operator.index(v)
    raise TypeError("%s must be an integer, got %s %r" % (name, type(v).__name__, v))


def as_float(v, name: str, finite: bool = True) -> float:
    if isinstance(v, bool):
        raise TypeError("%s must be a real number, got bool %r" % (name, v))
    if isinstance(v, (torch.SymFloat, torch.SymInt)):
        return v
    if isinstance(v, torch.Tensor):
        if v.dim() != 0 or v.is_complex() or v.dtype == torch.bool:
            raise TypeError("%s must be a real number, got a tensor of dtype %s and shape %s" % (
                name, v.dtype, tuple(v.shape)))
        v = v.item()
    if not isinstance(v, numbers.Real):
        raise TypeError("%s must be a real number, got %s %r" % (name, type(v).__name__, v))
    f = float(v)
    if finite and not math.isfinite(f):
        raise ValueError("%s must be finite, got %r" % (name, f))
    return f


def as_bool(v, name: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, numbers.Integral) and not isinstance(v, torch.Tensor) and v in (0, 1):
        return bool(v)
    if isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype == torch.bool:
        return bool(v.item())
    raise TypeError("%s must be a bool, got %s %r" % (name, type(v).__name__, v))


def check_int_range(v: int, name: str, lo=None, hi=None) -> int:
    """lo <= v <= hi (either bound may be None); ValueError naming the argument otherwise."""
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError("%s must be in [%s, %s], got %s" % (name, "-inf" if lo is None else lo,
                                                              "inf" if hi is None else hi, v))
    return v


# ---- helpers for the fake (meta) kernels: the C++ checks restated, same exception types --------------------
_INT64_MAX = 2**63 - 1


def fcheck(cond, msg):
    """ValueError unless cond (SymBool-friendly: guards under tracing, as the C++ TORCH_CHECK_VALUE)."""
    torch._check_value(cond, lambda: msg() if callable(msg) else msg)


def fcheck_type(cond, msg):
    torch._check_type(cond, lambda: msg() if callable(msg) else msg)


def checked_mul(a, b, what: str):
    """a * b for sizes, ValueError when the product leaves int64 (the C++ checked_mul)."""
    r = a * b
    if isinstance(r, int) and not (-_INT64_MAX - 1 <= r <= _INT64_MAX):
        raise ValueError("%s overflows int64 (%d * %d)" % (what, a, b))
    return r


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def fcheck_floating(t, name: str):
    fcheck_type(t.dtype in _FLOATS, lambda: "%s must be float16, bfloat16, float32 or float64, got %s" % (
        name, c10_name(t.dtype)))


# c10's names of the dtypes, as the C++ checks print them ("kept_idx must be Long, got Float")
_C10_NAMES = {torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
              torch.uint8: "Byte", torch.bool: "Bool", torch.float32: "Float", torch.float64: "Double",
              torch.float16: "Half", torch.bfloat16: "BFloat16"}


def c10_name(dtype) -> str:
    return _C10_NAMES.get(dtype, str(dtype))


def fcheck_dtype(t, dtype, name: str):
    fcheck_type(t.dtype == dtype, lambda: "%s must be %s, got %s" % (name, c10_name(dtype), c10_name(t.dtype)))


def fcheck_dim(t, d: int, name: str):
    fcheck(t.dim() == d, lambda: "%s must have %d dimensions, got shape %s" % (name, d, tuple(t.shape)))
