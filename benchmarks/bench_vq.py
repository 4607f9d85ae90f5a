"""vq.nearest / nearest_topk vs the references users run today, at the shapes of real tokenizers.

References: "expand" = (x^2).sum + (e^2).sum - 2 x @ e^T then argmin (taming / LlamaGen / TiTok), and
torch.cdist + argmin. Both materialize N x K; the fused kernel keeps O(N) + the packed codebook.
"""

import torch

from imtok_cuda import vq
from imtok_cuda.reference import vq as ref

from ._common import compare, main


def _expand_argmin(x, cb):
    d = (x * x).sum(-1, keepdim=True) + (cb * cb).sum(-1) - 2 * x @ cb.t()
    return d.argmin(-1)


def _cdist_argmin(x, cb):
    return torch.cdist(x, cb).argmin(-1)


def shapes(quick):
    # (label, N, K, D, metric, run the reference?)
    if quick:
        return [("TiTok / One-D-Piece", 16384, 4096, 12, "l2", True),
                ("LlamaGen VQ-16 (N/4)", 16384, 16384, 8, "l2", True),
                ("LlamaGen VQ-16 b256", 65536, 16384, 8, "l2", False),
                ("taming f16 (N/4)", 4096, 16384, 256, "l2", True)]
    return [("TiTok / One-D-Piece", 16384, 4096, 12, "l2", True),
            ("TiTok 256x256 tokens", 65536, 4096, 12, "cosine", True),
            ("LlamaGen VQ-16 b256", 65536, 16384, 8, "l2", False),
            ("TiTok VQ8k / MaskGen", 32768, 8192, 64, "l2", True),
            ("taming f16-16384", 16384, 16384, 256, "l2", True)]


def run(device="cpu", quick=False):
    rows = []
    reps = 3 if quick else 5
    for label, N, K, D, metric, with_ref in shapes(quick):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, D, generator=g).to(device)
        cb = torch.randn(K, D, generator=g).to(device)
        shape = f"{label}: N={N} K={K} D={D}"
        need_gb = 3 * N * K * 4 / 2**30
        note = "" if with_ref else f"reference skipped: needs ~{need_gb:.1f} GiB of N x K buffers"
        if metric == "l2":
            reference = (lambda: _expand_argmin(x, cb)) if with_ref else None
        else:
            reference = (lambda: ref.nearest(x, cb, metric)[0]) if with_ref else None
        rows.append(compare("vq", f"nearest {metric} vs expand+argmin", shape, device,
                            lambda: vq.nearest(x, cb, metric), reference, reps=reps, notes=note))
        if with_ref and metric == "l2" and not quick:
            rows.append(compare("vq", "nearest l2 vs cdist+argmin", shape, device,
                                lambda: vq.nearest(x, cb, metric), lambda: _cdist_argmin(x, cb), reps=reps))
    N, K, D, k = (4096, 4096, 12, 100) if quick else (16384, 4096, 12, 100)
    x = torch.randn(N, D).to(device)
    cb = torch.randn(K, D).to(device)
    rows.append(compare("vq", f"nearest_topk k={k} vs sort", f"RobusTok delta: N={N} K={K} D={D}", device,
                        lambda: vq.nearest_topk(x, cb, k), lambda: ref.nearest_topk(x, cb, k), reps=reps))
    return rows


if __name__ == "__main__":
    main(run)
