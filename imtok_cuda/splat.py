"""Gaussian splat rendering (GPSToken decode): N Gaussian tokens -> a C x H x W feature map.

``render(geometry, features, size)`` is the fused op (CPU and CUDA kernels, culled to each Gaussian's box,
batched, deterministic backward); ``imtok_cuda.reference.splat.render`` is its dense PyTorch specification.
``entropy_partition`` is GPSToken's entropy-driven initial layout of the Gaussians.

Conventions (identical to the reference):
  geometry[b, n] = (sigma_x, sigma_y, rho, mu_x, mu_y) with sigma > 0, |rho| < 1; features[b, n] = f_n (C channels)
  pixel grid x_j = 2 j / (W - 1) - 1, y_i = 2 i / (H - 1) - 1 (align_corners; -1 for a side of one pixel)
  F[b, c, i, j] = sum_n [|dx| <= s sigma_x and |dy| <= s sigma_y] exp(-q / (2 (1 - rho^2))) f_n[c]
  q = dx^2 / sigma_x^2 - 2 rho dx dy / (sigma_x sigma_y) + dy^2 / sigma_y^2,  dx = x_j - mu_x, dy = y_i - mu_y
  s = box_sigma (default 3; None or inf: no cutoff); lengths[b] = number of valid tokens of image b (the rest
  are ignored and get zero gradient); normalize=True divides by the weight sum sum_n [in box] v_n (0 where
  no token reaches a pixel). Sums over tokens run in token order; backward treats the box as constant.
  Accumulation is float32 (float64 for float64 inputs); the output has the features' dtype.
"""
import math

import torch

from . import _loader  # noqa: F401  (loads the compiled ops)
from ._args import as_bool, as_float, as_int, fcheck, fcheck_dim, fcheck_floating
from ._register import register_autograd, register_fake

__all__ = ["render", "entropy_partition", "region_complexity"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _box(box_sigma):
    if box_sigma is None:
        return math.inf
    box_sigma = as_float(box_sigma, "box_sigma", finite=False)
    if not box_sigma > 0:
        raise ValueError("box_sigma must be positive (None or inf for no cutoff), got {}".format(box_sigma))
    return box_sigma


def _size(size):
    if isinstance(size, torch.Tensor) or not isinstance(size, (tuple, list, torch.Size)):
        size = (size, size)
    if len(size) != 2:
        raise ValueError("size must be (H, W) or an int, got {}".format(size))
    H, W = as_int(size[0], "size[0] (H)"), as_int(size[1], "size[1] (W)")
    if H < 0 or W < 0:
        raise ValueError("size must be non-negative, got {}".format(tuple(size)))
    return H, W


def _check(geometry, features, lengths):
    if not isinstance(geometry, torch.Tensor):
        raise TypeError("geometry must be a Tensor, got {}".format(type(geometry).__name__))
    if not isinstance(features, torch.Tensor):
        raise TypeError("features must be a Tensor, got {}".format(type(features).__name__))
    if geometry.dim() != 3 or geometry.shape[-1] != 5:
        raise ValueError("geometry must have shape [B, N, 5] (sigma_x, sigma_y, rho, mu_x, mu_y), got {}".format(
            tuple(geometry.shape)))
    if features.dim() != 3 or features.shape[:2] != geometry.shape[:2]:
        raise ValueError("features must have shape [B, N, C] with B, N = {}, got {}".format(
            tuple(geometry.shape[:2]), tuple(features.shape)))
    if geometry.dtype not in _FLOAT_DTYPES:
        raise TypeError("geometry must be float16, bfloat16, float32 or float64, got {}".format(geometry.dtype))
    if features.dtype not in _FLOAT_DTYPES:
        raise TypeError("features must be float16, bfloat16, float32 or float64, got {}".format(features.dtype))
    if geometry.dtype != features.dtype:
        raise TypeError("geometry and features must have the same dtype, got {} and {}".format(
            geometry.dtype, features.dtype))
    if geometry.device != features.device:
        raise ValueError("geometry and features must be on the same device, got {} and {}".format(
            geometry.device, features.device))
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor):
            raise TypeError("lengths must be an int Tensor of shape [B], got {}".format(type(lengths).__name__))
        if lengths.dtype not in (torch.int32, torch.int64):
            raise TypeError("lengths must be int32 or int64, got {}".format(lengths.dtype))
        if lengths.shape != geometry.shape[:1]:
            raise ValueError("lengths must have shape [B] = [{}], got {}".format(geometry.shape[0],
                                                                                tuple(lengths.shape)))
        if lengths.device != geometry.device:
            raise ValueError("lengths must be on the device of geometry ({}), got {}".format(
                geometry.device, lengths.device))


def render(geometry, features, size, box_sigma=3.0, lengths=None, normalize=False, check_values=True):
    """Splat N Gaussian tokens per image into a [B, C, H, W] feature map (see the module docstring).

    geometry [B, N, 5], features [B, N, C] (same float dtype and device), size (H, W) or int, box_sigma the
    box half-width in sigmas (None: no cutoff), lengths [B] int valid-token counts, normalize to divide by the
    weight sum. Differentiable in geometry and features. The op validates the values (sigma > 0, |rho| < 1,
    finite mu, 0 <= lengths <= N) on every device before any kernel runs (on CUDA a device-to-host copy of the
    geometry, i.e. a sync); ``check_values`` is kept for compatibility and has no effect.
    """
    H, W = _size(size)
    s = _box(box_sigma)
    _check(geometry, features, lengths)
    return torch.ops.imtok_cuda.splat_render(geometry, features, H, W, s, lengths, as_bool(normalize, "normalize"))


# ---- registration: fake kernels and autograd ---------------------------------------------------------------
def _fake_render_args(geometry, features, H, W, box_sigma, lengths):
    """csrc/splat/splat_checks.h check_render_args restated (shapes, dtypes, sizes; the CPU kernel also checks
    sigma / rho / lengths values, which fake tensors cannot)."""
    fcheck_dim(geometry, 3, "geometry")
    fcheck(geometry.shape[2] == 5, lambda: "geometry.shape[2] must be 5, got shape %s" % (tuple(geometry.shape),))
    fcheck_dim(features, 3, "features")
    fcheck(features.shape[0] == geometry.shape[0] and features.shape[1] == geometry.shape[1],
           lambda: "features must have shape [B, N, C] with B, N of geometry %s, got %s" % (
               tuple(geometry.shape), tuple(features.shape)))
    fcheck_floating(geometry, "geometry")
    fcheck_floating(features, "features")
    torch._check_type(geometry.dtype == features.dtype, lambda: "geometry and features must have the same dtype")
    fcheck(H >= 0 and W >= 0, lambda: "size (H, W) must be non-negative, got (%s, %s)" % (H, W))
    fcheck(H <= 2**24 and W <= 2**24, lambda: "size (H, W) too large: (%s, %s)" % (H, W))
    fcheck(box_sigma > 0, lambda: "box_sigma must be positive (or inf for no cutoff), got %s" % box_sigma)
    if lengths is not None:
        fcheck_dim(lengths, 1, "lengths")
        fcheck(lengths.shape[0] == geometry.shape[0], lambda: "lengths.shape[0] must be %s, got shape %s" % (
            geometry.shape[0], tuple(lengths.shape)))
        torch._check_type(lengths.dtype in (torch.int32, torch.int64), lambda: "lengths must be int32 or int64, "
                          "got %s" % (lengths.dtype,))


@register_fake("splat_render")
def _render_fake(geometry, features, H, W, box_sigma=3.0, lengths=None, normalize=False):
    _fake_render_args(geometry, features, H, W, box_sigma, lengths)
    return features.new_empty((geometry.shape[0], features.shape[2], H, W))


@register_fake("splat_render_backward")
def _backward_fake(grad_out, geometry, features, out, H, W, box_sigma, lengths, normalize):
    _fake_render_args(geometry, features, H, W, box_sigma, lengths)
    fcheck_dim(grad_out, 4, "grad_out")
    want = (geometry.shape[0], features.shape[2], H, W)
    fcheck(tuple(grad_out.shape) == want, lambda: "grad_out must have shape [B, C, H, W] = %s, got %s" % (
        list(want), tuple(grad_out.shape)))
    fcheck_floating(grad_out, "grad_out")
    if normalize:
        fcheck(out is not None, "out (the forward output) is required when normalize=True")
        fcheck(tuple(out.shape) == tuple(grad_out.shape), "out must have the shape of grad_out")
    return torch.empty_like(geometry, memory_format=torch.contiguous_format), torch.empty_like(
        features, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    geometry, features, H, W, box_sigma, lengths, normalize = inputs
    ctx.H, ctx.W, ctx.box_sigma, ctx.normalize = H, W, box_sigma, normalize
    ctx.save_for_backward(geometry, features, lengths, output if normalize else None)


def _backward(ops, ctx, grad):
    geometry, features, lengths, out = ctx.saved_tensors
    dg, df = ops.splat_render_backward(grad.contiguous(), geometry, features, out, ctx.H, ctx.W, ctx.box_sigma,
                                       lengths, ctx.normalize)
    return dg, df, None, None, None, None, None


register_autograd("splat_render", _backward, _setup)


# ---- entropy-driven initial partition (GPSToken) ------------------------------------------------------------
def region_complexity(grey, weight=2.5):
    """GPSToken's complexity of a grey region [h, w] with values in [0, 1]: H^weight * h * w.

    H is the Shannon entropy (log2) of a 512-bin histogram over [-5.5, 5.5] of the Sobel gradient magnitude
    (3x3, replicated border) of the region resized bilinearly (half-pixel centres) to 64 x 64; the histogram is
    normalised by (count + 1e-5) and H = -sum p log2(p + 1e-10), as the GPSToken data pipeline does.
    """
    h, w = grey.shape
    x = torch.nn.functional.interpolate(grey.double()[None, None], size=(64, 64), mode="bilinear",
                                        align_corners=False)
    x = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")[0, 0]  # [66, 66]
    # 3x3 Sobel as shifted slices (cheap and single-threaded at this size, unlike a conv2d call)
    sm_y = x[:-2] + 2 * x[1:-1] + x[2:]  # [64, 66] smoothing along y
    sm_x = x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]  # [66, 64] smoothing along x
    gx = sm_y[:, 2:] - sm_y[:, :-2]
    gy = sm_x[2:] - sm_x[:-2]
    mag = (gx * gx + gy * gy).sqrt().flatten()
    lo, hi, bins = -5.5, 5.5, 512
    mag = mag[(mag >= lo) & (mag <= hi)]
    idx = ((mag - lo) * (bins / (hi - lo))).floor().long().clamp_(max=bins - 1)
    hist = torch.bincount(idx, minlength=bins).double()
    p = hist / (hist.sum() + 1e-5)
    ent = -(p * torch.log2(p + 1e-10)).sum()
    return float(ent) ** weight * h * w


def _partition_one(grey, n_tokens, minhw, weight):
    Hh, Ww = grey.shape

    def score(h0, h1, w0, w1):
        return region_complexity(grey[h0:h1 + 1, w0:w1 + 1], weight)

    regions = [(score(0, Hh - 1, 0, Ww - 1), 0, Hh - 1, 0, Ww - 1)]  # (complexity, h0, h1, w0, w1), inclusive
    while len(regions) < n_tokens:
        regions = sorted(regions, key=lambda r: r[0], reverse=True)  # stable: ties keep their order
        pick = next((k for k, r in enumerate(regions) if r[2] - r[1] > minhw or r[4] - r[3] > minhw), None)
        if pick is None:
            raise ValueError("entropy_partition: cannot split a {}x{} image into {} regions with minhw={} "
                             "(stopped at {})".format(Hh, Ww, n_tokens, minhw, len(regions)))
        _, h0, h1, w0, w1 = regions.pop(pick)
        h, w = h1 - h0 + 1, w1 - w0 + 1
        xs = ys = None
        if w > minhw and w >= h:  # split the columns in halves
            m = w0 + w // 2
            xs = [(score(h0, h1, w0, m - 1), h0, h1, w0, m - 1), (score(h0, h1, m, w1), h0, h1, m, w1)]
        if h > minhw and h >= w:  # split the rows in halves
            m = h0 + h // 2
            ys = [(score(h0, m - 1, w0, w1), h0, m - 1, w0, w1), (score(m, h1, w0, w1), m, h1, w0, w1)]
        if w > h:
            regions += xs
        elif w < h:
            regions += ys
        elif min(r[0] for r in xs) < min(r[0] for r in ys):  # square: the split with the simpler child
            regions += xs
        else:
            regions += ys
    geo = []
    for _, h0, h1, w0, w1 in regions:
        sx = max((w1 - w0) / Ww * 2.0 / 3.0, 1e-5)
        sy = max((h1 - h0) / Hh * 2.0 / 3.0, 1e-5)
        mx = ((w1 + w0) / 2.0 / max(Ww - 1, 1) - 0.5) * 2.0
        my = ((h1 + h0) / 2.0 / max(Hh - 1, 1) - 0.5) * 2.0
        geo.append((sx, sy, 0.0, mx, my))
    return geo


def entropy_partition(images, n_tokens, minhw=8, weight=2.5):
    """GPSToken's entropy-driven initial Gaussians: images [B, 3 or 1, H, W] in [-1, 1] -> geometry [B, n, 5].

    Greedy binary split of the (grey: 0.299 R + 0.587 G + 0.114 B) image: repeatedly take the most complex region
    (``region_complexity``, complexity^weight * area; ties keep their order: a stable sort) that can still be split
    (a side spans more than ``minhw`` pixels, i.e. has at least minhw + 2 pixels) and halve it along its longer
    side (first half = floor(side / 2) pixels); a square takes the split whose simpler child is simpler (rows on a
    tie). Each region [h0..h1] x [w0..w1] (inclusive) becomes sigma_x = (w1 - w0) / W * 2/3,
    sigma_y = (h1 - h0) / H * 2/3 (at least 1e-5), rho = 0, mu = the region centre on the align_corners grid.
    Tokens come in the order of the final region list. A one-off PyTorch initialisation (not a fused op); GPSToken
    applies it per 256 x 256 crop. Raises ValueError when the image cannot be split into n_tokens regions.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError("images must have shape [B, 3, H, W] or [B, 1, H, W], got {}".format(
            tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__))
    if not images.is_floating_point():
        raise TypeError("images must be a floating-point tensor, got {}".format(images.dtype))
    n_tokens, minhw, weight = as_int(n_tokens, "n_tokens"), as_int(minhw, "minhw"), as_float(weight, "weight")
    if n_tokens < 1:
        raise ValueError("n_tokens must be >= 1, got {}".format(n_tokens))
    if minhw < 0:
        raise ValueError("minhw must be >= 0, got {}".format(minhw))
    x = images.detach().double()
    if x.shape[1] == 3:
        grey = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    else:
        grey = x[:, 0]
    grey = (grey + 1.0) / 2.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of ops on 64 x 64 arrays: handing each to the thread pool costs more
    try:                      # than the op (8x slower with 2 threads on a busy 2-vCPU host)
        out = [_partition_one(grey[b], int(n_tokens), int(minhw), float(weight)) for b in range(x.shape[0])]
    finally:
        torch.set_num_threads(threads)
    return torch.tensor(out, dtype=torch.float32, device=images.device).view(x.shape[0], int(n_tokens), 5)
