"""Shared helpers of the vq quantizer wrappers (argument checks with the argument's name)."""
from __future__ import annotations

from typing import Sequence

import torch

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float(t, name: str):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_index(t, name: str):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int64 or int32, got {t.dtype}")


def check_levels(levels) -> list[int]:
    if isinstance(levels, torch.Tensor):
        levels = levels.tolist()
    if not isinstance(levels, Sequence) or len(levels) == 0:
        raise ValueError(f"levels must be a non-empty list of ints, got {levels!r}")
    out = []
    for j, L in enumerate(levels):
        if isinstance(L, bool) or not isinstance(L, int):
            raise TypeError(f"levels[{j}] must be an int, got {type(L).__name__}")
        if not 2 <= L <= 65536:
            raise ValueError(f"levels[{j}] must be in [2, 65536], got {L}")
        out.append(int(L))
    return out


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
