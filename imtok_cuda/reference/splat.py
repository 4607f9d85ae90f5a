"""Dense PyTorch reference of the Gaussian splat renderer (GPSToken decode).

The readable specification of ``imtok_cuda.splat.render``; it evaluates every Gaussian at every pixel
(a [B, N, H, W] intermediate), so it is only meant for tests and small maps. Conventions:

* geometry[b, n] = (sigma_x, sigma_y, rho, mu_x, mu_y); features[b, n] = f_n in R^C.
* pixel grid, align_corners style: x_j = 2 j / (W - 1) - 1, y_i = 2 i / (H - 1) - 1 (a side of size 1 sits at -1,
  the value ``torch.linspace(-1, 1, 1)`` gives).
* F[b, c, i, j] = sum_n [|dx| <= s sigma_x and |dy| <= s sigma_y] v_n f_n[c],  dx = x_j - mu_x, dy = y_i - mu_y,
  q = dx^2 / sigma_x^2 - 2 rho dx dy / (sigma_x sigma_y) + dy^2 / sigma_y^2,  v = exp(-q / (2 (1 - rho^2))).
  The box is inclusive; ``box_sigma=None`` (or inf) means no cutoff.
* ``lengths[b]``: tokens n >= lengths[b] of image b are ignored.
* ``normalize=True`` divides by the weight sum W = sum_n [in box] v_n (output 0 where W == 0).

Computation is in float32 for float16/bfloat16/float32 inputs and float64 for float64; the output has the
features' dtype.
"""
import math

import torch


def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def pixel_grid(n, dtype, device):
    """Coordinates of n pixels along one side: 2 j / (n - 1) - 1 (align_corners); [-1] when n == 1."""
    j = torch.arange(n, dtype=dtype, device=device)
    if n == 1:
        return j - 1
    return j * 2 / (n - 1) - 1


def gaussian_weights(geometry, size, box_sigma=3.0):
    """Per-token weights v[b, n, i, j] with the box mask applied (0 outside the box), in the compute dtype."""
    H, W = size
    cdt = compute_dtype(geometry.dtype)
    g = geometry.to(cdt)
    sx, sy, rho, mux, muy = [g[..., k, None, None] for k in range(5)]  # [B, N, 1, 1]
    x = pixel_grid(W, cdt, g.device).view(1, 1, 1, W)
    y = pixel_grid(H, cdt, g.device).view(1, 1, H, 1)
    dx = x - mux
    dy = y - muy
    q = dx * dx / (sx * sx) - 2 * rho * dx * dy / (sx * sy) + dy * dy / (sy * sy)
    v = torch.exp(-q / (2 * (1 - rho * rho)))
    if box_sigma is not None and not math.isinf(box_sigma):
        inside = (dx.abs() <= box_sigma * sx) & (dy.abs() <= box_sigma * sy)
        v = torch.where(inside, v, torch.zeros((), dtype=cdt, device=g.device))
    return v


def render(geometry, features, size, box_sigma=3.0, lengths=None, normalize=False):
    """Dense splat: geometry [B, N, 5], features [B, N, C] -> [B, C, H, W] (see the module docstring)."""
    H, W = size
    cdt = compute_dtype(features.dtype)
    f = features.to(cdt)
    if lengths is None:
        v = gaussian_weights(geometry, (H, W), box_sigma)  # [B, N, H, W]
    else:
        n = torch.arange(geometry.shape[1], device=geometry.device)
        keep = n[None, :] < lengths.to(geometry.device).view(-1, 1)  # [B, N]
        # padding tokens may hold anything (sigma = 0 ...): evaluate a harmless stand-in, then drop it
        safe = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=geometry.dtype, device=geometry.device)
        v = gaussian_weights(torch.where(keep[..., None], geometry, safe), (H, W), box_sigma)
        v = v * keep.to(cdt)[:, :, None, None]
    out = torch.einsum("bnhw,bnc->bchw", v, f)
    if normalize:
        wsum = v.sum(dim=1, keepdim=True)  # [B, 1, H, W]
        nz = wsum != 0
        out = torch.where(nz, out / torch.where(nz, wsum, torch.ones_like(wsum)), torch.zeros_like(out))
    return out.to(features.dtype)


def render_direct(geometry, features, size, box_sigma=3.0, lengths=None, normalize=False):
    """Slow, literal float64 evaluation (Python loops over tokens, math per pixel row): the test oracle."""
    H, W = size
    B, N, _ = geometry.shape
    C = features.shape[-1]
    g = geometry.detach().double().cpu()
    f = features.detach().double().cpu()
    out = torch.zeros(B, C, H, W, dtype=torch.float64)
    wsum = torch.zeros(B, H, W, dtype=torch.float64)
    xs = [(2.0 * j / (W - 1) - 1.0) if W > 1 else -1.0 for j in range(W)]
    ys = [(2.0 * i / (H - 1) - 1.0) if H > 1 else -1.0 for i in range(H)]
    s = math.inf if box_sigma is None else float(box_sigma)
    for b in range(B):
        nb = N if lengths is None else int(lengths[b])
        for n in range(nb):
            sx, sy, rho, mux, muy = [float(t) for t in g[b, n]]
            vmap = torch.zeros(H, W, dtype=torch.float64)
            for i, y in enumerate(ys):
                dy = y - muy
                if not abs(dy) <= s * sy:
                    continue
                for j, x in enumerate(xs):
                    dx = x - mux
                    if not abs(dx) <= s * sx:
                        continue
                    q = dx * dx / (sx * sx) - 2 * rho * dx * dy / (sx * sy) + dy * dy / (sy * sy)
                    vmap[i, j] = math.exp(-q / (2 * (1 - rho * rho)))
            out[b] += f[b, n][:, None, None] * vmap
            wsum[b] += vmap
    if normalize:
        nz = wsum != 0
        out = torch.where(nz[:, None], out / torch.where(nz, wsum, torch.ones_like(wsum))[:, None], 0.0)
    return out
