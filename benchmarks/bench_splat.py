"""splat.render (culled, fused) vs the dense PyTorch renderer (imtok_cuda.reference.splat), forward and
forward+backward, at GPSToken's shapes: B=16, N in {64, 128, 256}, C in {16, 32} on a 64 x 64 map, and the
1024-px variant N=4096, C=16 on 256 x 256 (where the dense reference would need B*N*H*W buffers: skipped, with
the memory it would take).

Geometry is GPSToken-like: mu uniform in [-1, 1], sigma = (2/3) / sqrt(N) (the entropy initialisation's size of
a region of 1/N of the image) times U(0.6, 1.4), rho in +-0.5, box_sigma = 3.
"""

import torch

from imtok_cuda import splat
from imtok_cuda.reference import splat as ref

from ._common import compare, main


def make(B, N, C, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = (2.0 / 3.0) / N ** 0.5
    geo = torch.empty(B, N, 5)
    geo[..., :2] = base * (0.6 + 0.8 * torch.rand(B, N, 2, generator=g))
    geo[..., 2] = (torch.rand(B, N, generator=g) * 2 - 1) * 0.5
    geo[..., 3:] = torch.rand(B, N, 2, generator=g) * 2 - 1
    f = torch.randn(B, N, C, generator=g)
    return geo.to(device), f.to(device)


def _fwd(fn, geo, f, size):
    def run():
        with torch.no_grad():
            return fn(geo, f, size)
    return run


def _fwd_bwd(fn, geo, f, size, grad):
    def run():
        g = geo.detach().requires_grad_()
        x = f.detach().requires_grad_()
        out = fn(g, x, size)
        out.backward(grad)
        return g.grad, x.grad
    return run


def shapes(quick):
    # (label, B, N, C, H, W, run the dense reference?)
    if quick:
        return [("GPSToken-M128", 16, 128, 16, 64, 64, True),
                ("1024px variant (B=2)", 2, 4096, 16, 256, 256, False)]
    out = []
    for N in (64, 128, 256):
        for C in (16, 32):
            out.append((f"GPSToken N={N}", 16, N, C, 64, 64, True))
    out.append(("1024px variant", 16, 4096, 16, 256, 256, False))
    return out


def run(device="cpu", quick=False):
    rows = []
    reps = 3 if quick else 5
    fused = lambda g, f, size: splat.render(g, f, size, box_sigma=3.0)  # noqa: E731
    dense = lambda g, f, size: ref.render(g, f, size, box_sigma=3.0)  # noqa: E731
    for label, B, N, C, H, W, with_ref in shapes(quick):
        geo, f = make(B, N, C, device)
        grad = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(1)).to(device)
        shape = f"{label}: B={B} N={N} C={C} {H}x{W}"
        # dense: v [B,N,H,W] plus dx, dy, q, mask and their gradients: >= ~6 such buffers in float32
        need_gib = 6 * B * N * H * W * 4 / 2**30
        note = "" if with_ref else f"dense reference skipped: needs >= {need_gib:.0f} GiB ([B,N,H,W] buffers)"
        rows.append(compare("splat", "render fwd vs dense", shape, device, _fwd(fused, geo, f, (H, W)),
                            _fwd(dense, geo, f, (H, W)) if with_ref else None, reps=reps, notes=note))
        rows.append(compare("splat", "render fwd+bwd vs dense", shape, device,
                            _fwd_bwd(fused, geo, f, (H, W), grad),
                            _fwd_bwd(dense, geo, f, (H, W), grad) if with_ref else None, reps=reps, notes=note))
    return rows


if __name__ == "__main__":
    main(run)
