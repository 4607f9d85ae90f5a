"""vq quantizers vs the references users run today, same inputs, same run.

Rows: FSQ [8,8,8,5,5,5] at N=65536 (forward, forward+backward) vs vector-quantize-pytorch's math; the LFQ
entropy aux loss (codebook entropy + per-sample) at d=14 and d=18 vs the anchor's N x 2^d softmax (reported as
not run when its buffers cannot fit); EMA statistics at N=65536, K=16384, D=8 vs one_hot matmul (the anchor)
and index_add.
"""

import torch

from imtok_cuda import vq
from imtok_cuda.reference import vq_quantizers as ref

from ._common import compare, main

FSQ_LEVELS = [8, 8, 8, 5, 5, 5]


def _avail_bytes(device):
    if str(device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def _fsq_rows(device, quick, reps):
    rows = []
    N = 65536
    for dtype in (torch.float32, torch.bfloat16):
        z = (torch.randn(N, len(FSQ_LEVELS), generator=torch.Generator().manual_seed(0)) * 2).to(device, dtype)
        shape = f"N={N} levels={FSQ_LEVELS} {str(dtype).replace('torch.', '')}"
        rows.append(compare("vq", "fsq forward vs anchor math", shape, device,
                            lambda: vq.fsq(z, FSQ_LEVELS), lambda: ref.anchor_fsq(z, FSQ_LEVELS), reps=reps))
        if dtype == torch.float32:
            g = torch.randn(N, len(FSQ_LEVELS), device=device)

            def fused_fb():
                zz = z.detach().requires_grad_()
                vq.fsq(zz, FSQ_LEVELS)[0].backward(g)
                return zz.grad

            def ref_fb():
                zz = z.detach().requires_grad_()
                ref.anchor_fsq(zz, FSQ_LEVELS)[0].backward(g)
                return zz.grad

            rows.append(compare("vq", "fsq forward+backward vs anchor autograd", shape, device, fused_fb, ref_fb,
                                reps=reps))
    return rows


def _lfq_rows(device, quick, reps):
    rows = []
    cases = [(512, 14), (256, 18)] if quick else [(65536, 14), (16384, 18), (65536, 18)]
    for N, d in cases:
        x = (torch.randn(N, d, generator=torch.Generator().manual_seed(1)) * 0.05).to(device)
        shape = f"N={N} d={d} (2^{d} codes)"

        def fused():
            xx = x.detach().requires_grad_()
            ps, cb = vq.lfq_entropy(xx, 100.0)
            (ps - cb).backward()
            return xx.grad

        def reference():
            xx = x.detach().requires_grad_()
            ps, cb = ref.anchor_lfq_entropy(xx, 100.0)
            (ps - cb).backward()
            return xx.grad

        # the anchor holds ~4 N x 2^d fp32 buffers (distance, logits, softmax, its grad) at its peak
        need = 4 * N * 2**d * 4
        fits = need < 0.6 * _avail_bytes(device) and not (quick and d > 14)
        note = "" if fits else f"reference not run: needs ~{need / 2**30:.0f} GiB of N x 2^d buffers"
        if quick and d > 14:
            note += " (skipped in quick mode)"
        rows.append(compare("vq", "lfq entropy loss fwd+bwd vs materialized softmax", shape, device, fused,
                            reference if fits else None, reps=reps, notes=note))
    return rows


def _ema_rows(device, quick, reps):
    rows = []
    N, K, D = 65536, 16384, 8
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, D, generator=g).to(device)
    idx = torch.randint(0, K, (N,), generator=g).to(device)
    shape = f"N={N} K={K} D={D}"
    rows.append(compare("vq", "ema_stats vs bincount+index_add", shape, device,
                        lambda: vq.ema_stats(x, idx, K), lambda: ref.ema_stats(x, idx, K, "index_add"), reps=reps))
    need = N * K * 4
    fits = need < 0.4 * _avail_bytes(device) and not quick
    note = "" if fits else f"reference not run: one_hot needs {need / 2**30:.0f} GiB"
    if quick:
        note += " (skipped in quick mode)"
    rows.append(compare("vq", "ema_stats vs one_hot matmul (anchor)", shape, device,
                        lambda: vq.ema_stats(x, idx, K),
                        (lambda: ref.ema_stats(x, idx, K, "one_hot")) if fits else None, reps=reps, notes=note))
    rows.append(compare("vq", "code_counts vs bincount", shape, device,
                        lambda: vq.code_counts(idx, K), lambda: ref.code_counts(idx, K), reps=reps))
    return rows


def run(device="cpu", quick=False):
    reps = 2 if quick else 5
    return _fsq_rows(device, quick, reps) + _lfq_rows(device, quick, reps) + _ema_rows(device, quick, reps)


if __name__ == "__main__":
    main(run)
