"""Token merging (ToMe, tomesd) and Token-Shuffle: fused ops vs the pure-PyTorch references, same inputs, same run.

Shapes: one ToMe layer of ViT-B/16 (T = 197 with CLS, metric = keys averaged over heads C = 64, features 768,
r = 16, sizes from earlier merges), B in {1, 64}; tomesd at an SD 64x64 latent (4096 tokens, 320 channels,
ratio 0.5, stride 2, batch 2 as with classifier-free guidance); Token-Shuffle s = 2 on a 64x64 token grid.

    python benchmarks/bench_merge.py [--quick] [--device cpu|cuda] [--out bench_out/merge]
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import compare, main  # noqa: E402

from imtok_cuda import merge as M  # noqa: E402
from imtok_cuda import shuffle as S  # noqa: E402
from imtok_cuda.reference import merge as RM  # noqa: E402
from imtok_cuda.reference import shuffle as RS  # noqa: E402


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


def _shuffle_rows(device, quick):
    reps = 3 if quick else 10
    B, h, w, s, D = 4, 32, 32, 2, 256
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, h * s * w * s, D, generator=g).to(device)
    wt = (torch.randn(D, s * s * D, generator=g) * 0.02).to(device)
    b = torch.zeros(D).to(device)
    wt2 = (torch.randn(s * s * D, D, generator=g) * 0.02).to(device)
    y = torch.randn(B, h * w, D, generator=g).to(device)
    shape = f"B={B} 64x64->32x32 s=2 D={D}"
    return [
        compare("shuffle", "token_shuffle", shape, device, lambda: S.token_shuffle(x, h, w, s),
                lambda: RS.token_shuffle(x, h, w, s).contiguous(), reps=reps, notes="reference made contiguous"),
        compare("shuffle", "shuffle_linear (s^2 D -> D)", shape, device, lambda: S.shuffle_linear(x, h, w, s, wt, b),
                lambda: RS.shuffle_linear(x, h, w, s, wt, b), reps=reps),
        compare("shuffle", "linear_unshuffle (D -> s^2 D)", shape, device,
                lambda: S.linear_unshuffle(y, h, w, s, wt2, None), lambda: RS.linear_unshuffle(y, h, w, s, wt2, None),
                reps=reps),
    ]


def run(device="cpu", quick=False):
    with torch.no_grad():
        return _tome_rows(device, quick) + _tomesd_rows(device, quick) + _shuffle_rows(device, quick)


if __name__ == "__main__":
    main(run)
