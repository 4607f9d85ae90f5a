"""Token merging (ToMe, tomesd): fused ops vs the pure-PyTorch references, same inputs, same run.

Shapes: one ToMe layer of ViT-B/16 (T = 197 with CLS, metric = keys averaged over heads C = 64, features 768,
r = 16, sizes from earlier merges), B in {1, 64}; tomesd at an SD 64x64 latent (4096 tokens, 320 channels,
ratio 0.5, stride 2, batch 2 as with classifier-free guidance). Token-Shuffle: bench_shuffle.py.

    python -m benchmarks.bench_merge [--quick] [--device cpu|cuda] [--out bench_out/merge]
"""

import torch

from imtok_cuda import merge as M
from imtok_cuda.reference import merge as RM

from ._common import compare, main


def _tome_rows(device, quick):
    rows = []
    reps = 5 if quick else 20
    for B in (1, 64):
        g = torch.Generator().manual_seed(B)
        metric = torch.randn(B, 197, 64, generator=g).to(device)
        x = torch.randn(B, 197, 768, generator=g).to(device)
        size = (torch.rand(B, 197, 1, generator=g) * 3 + 1).to(device)
        shape = f"B={B} T=197 C=64/768 r=16"

        def ref_step():
            merge, _ = RM.bipartite_soft_matching(metric, 16, True, False)
            return RM.merge_wavg(merge, x, size)

        def fused_step():
            merge, _ = M.bipartite_soft_matching(metric, 16, True, False)
            return M.merge_wavg(merge, x, size)

        rows.append(compare("merge", "tome_step (match + merge_wavg)", shape, device, fused_step, ref_step,
                            reps=reps, notes="issue target >= 2x at B=64 on CPU"))
        rows.append(compare("merge", "tome_match", shape, device,
                            lambda: M.tome_match(metric, 16, True), lambda: RM.tome_plan(metric, 16, True),
                            reps=reps))
        mr, ur = RM.bipartite_soft_matching(metric, 16, True)
        mf, uf = M.bipartite_soft_matching(metric, 16, True)
        rows.append(compare("merge", "merge_wavg (plan given)", shape, device,
                            lambda: M.merge_wavg(mf, x, size), lambda: RM.merge_wavg(mr, x, size), reps=reps))
        y = mr(x)
        rows.append(compare("merge", "unmerge", shape, device, lambda: uf(y), lambda: ur(y), reps=reps))
    return rows


def _tomesd_rows(device, quick):
    reps = 3 if quick else 10
    B, h, w, C = 2, 64, 64, 320
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, h * w, C, generator=g).to(device)
    r = int(h * w * 0.5)
    gen_device = "cuda" if str(device).startswith("cuda") else "cpu"

    def run(impl):
        gen = torch.Generator(device=gen_device).manual_seed(1)

        def step():
            m, u = impl.bipartite_soft_matching_random2d(x, w, h, 2, 2, r, False, gen)
            return u(m(x))

        return step

    return [compare("merge", "tomesd step (match + merge + unmerge)", f"B={B} 64x64 C={C} ratio=0.5", device,
                    run(M), run(RM), reps=reps)]


def run(device="cpu", quick=False):
    with torch.no_grad():
        return _tome_rows(device, quick) + _tomesd_rows(device, quick)


if __name__ == "__main__":
    main(run)
