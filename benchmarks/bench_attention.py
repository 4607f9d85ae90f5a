"""attention vs what users run today, at ViT-B, ViT-L/336 and SD-like shapes.

Two comparisons per shape, same inputs, same run:
- output only: imtok_cuda attention vs torch SDPA (F.scaled_dot_product_attention);
- with the side outputs token reduction needs (CLS row per head + head mean, column sums per head + head
  mean, LSE): imtok_cuda attention_with_side_outputs vs eager attention that returns the probabilities
  (softmax(q k^T * scale), then p @ v, p[:, :, 0], p.sum(2)): the only way the anchors give them today.
Peak extra memory: CUDA allocator peak on GPU, resident-set high-water mark on CPU (benchmarks/_common.py).
"""
import math

import torch
import torch.nn.functional as F

from imtok_cuda import attention as A

from ._common import compare, main


def eager_with_probs(q, k, v):
    """Eager attention returning the side outputs through the materialized probabilities."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)
    out = p @ v
    lse = None  # eager attention does not produce it; not counted against it
    cls = p[:, :, 0]
    col = p.sum(dim=2)
    return out, lse, cls, cls.mean(1), col, col.mean(1)


def shapes(quick):
    # (label, B, H, N, d)
    if quick:
        return [("ViT-B/16 224", 8, 12, 197, 64), ("ViT-L/14 336", 2, 16, 577, 64), ("SD-like 64x64", 1, 2, 4096, 64)]
    return [("ViT-B/16 224", 64, 12, 197, 64), ("ViT-L/14 336", 16, 16, 577, 64), ("SD-like 64x64", 2, 8, 4096, 64)]


def run(device="cpu", quick=False):
    rows = []
    reps = 2 if quick else 5
    # on a GPU also bf16, where imtok_cuda runs its tensor-core forward and SDPA its FlashAttention kernel
    dtypes = [torch.float32, torch.bfloat16] if device != "cpu" else [torch.float32]
    for (label, B, H, N, d), dtype in [(s, t) for s in shapes(quick) for t in dtypes]:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, H, N, d, generator=g).to(device=device, dtype=dtype) for _ in range(3))
        shape = f"{label}: B={B} H={H} N={N} d={d}" + ("" if dtype == torch.float32 else " bf16")
        rows.append(compare("attention", "output only vs SDPA", shape, device,
                            lambda: A.attention(q, k, v), lambda: F.scaled_dot_product_attention(q, k, v),
                            reps=reps))
        # eager holds the scores and the probabilities (2 x B H N^2 fp32); the fused op O(B H N) + tiles
        note = f"eager p alone: {B * H * N * N * 4 / 2**20:.0f} MiB"
        rows.append(compare("attention", "out+lse+CLS row+col sums vs eager probs", shape, device,
                            lambda: A.attention_with_side_outputs(q, k, v), lambda: eager_with_probs(q, k, v),
                            reps=reps, notes=note))
    # training step at the ViT-B shape: forward + backward (dq, dk, dv) vs SDPA's
    label, B, H, N, d = shapes(quick)[0]
    for dtype in dtypes:
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(B, H, N, d, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
                   for _ in range(3))
        go = torch.randn(B, H, N, d, generator=g).to(device=device, dtype=dtype)
        shape = f"{label}: B={B} H={H} N={N} d={d}" + ("" if dtype == torch.float32 else " bf16")
        rows.append(compare("attention", "forward+backward vs SDPA", shape, device,
                            lambda: torch.autograd.grad(A.attention(q, k, v), (q, k, v), go),
                            lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), go),
                            reps=reps))
    return rows


if __name__ == "__main__":
    main(run)
