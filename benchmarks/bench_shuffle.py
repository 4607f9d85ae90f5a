"""Token-Shuffle: fused ops vs the pure-PyTorch references, same inputs, same run.

Shapes: s = 2 on a 64x64 token grid (-> 32x32), D = 256, B = 4: token_shuffle alone, and fused with the linear
layer on either side (shuffle_linear s^2 D -> D, linear_unshuffle D -> s^2 D).

    python -m benchmarks.bench_shuffle [--quick] [--device cpu|cuda] [--out bench_out/shuffle]
"""
import torch

from imtok_cuda import shuffle as S
from imtok_cuda.reference import shuffle as RS

from ._common import compare, main


@torch.no_grad()
def run(device="cpu", quick=False):
    reps = 10  # milliseconds per call: quick mode can afford the rounds that steady the first-touch page faults
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
                lambda: RS.token_shuffle(x, h, w, s).contiguous(), warmup=2, reps=reps,
                notes="reference made contiguous"),
        compare("shuffle", "shuffle_linear (s^2 D -> D)", shape, device, lambda: S.shuffle_linear(x, h, w, s, wt, b),
                lambda: RS.shuffle_linear(x, h, w, s, wt, b), reps=reps),
        compare("shuffle", "linear_unshuffle (D -> s^2 D)", shape, device,
                lambda: S.linear_unshuffle(y, h, w, s, wt2, None), lambda: RS.linear_unshuffle(y, h, w, s, wt2, None),
                reps=reps),
    ]


if __name__ == "__main__":
    main(run)
