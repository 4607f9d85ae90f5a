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

__all__ = ["render", "entropy_partition"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _box(box_sigma):
    if box_sigma is None:
        return math.inf
    box_sigma = float(box_sigma)
    if not box_sigma > 0:
        raise ValueError("box_sigma must be positive (None or inf for no cutoff), got {}".format(box_sigma))
    return box_sigma


def _size(size):
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2:
        raise ValueError("size must be (H, W) or an int, got {}".format(size))
    H, W = size
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


def _check_values(geometry, lengths):
    """Value checks (sigma > 0, |rho| < 1, 0 <= lengths <= N). The CPU kernel checks these itself."""
    B, N = geometry.shape[:2]
    valid = torch.ones(B, N, dtype=torch.bool, device=geometry.device)
    if lengths is not None:
        if bool(((lengths < 0) | (lengths > N)).any()):
            raise ValueError("lengths must be in [0, N={}], got {}".format(N, lengths.tolist()))
        valid = torch.arange(N, device=geometry.device)[None] < lengths[:, None]
    g = geometry.detach()
    if bool((valid & ~((g[..., 0] > 0) & (g[..., 1] > 0))).any()):
        raise ValueError("geometry: sigma_x and sigma_y must be positive")
    if bool((valid & ~(g[..., 2].abs() < 1)).any()):
        raise ValueError("geometry: rho must be in (-1, 1)")


def render(geometry, features, size, box_sigma=3.0, lengths=None, normalize=False, check_values=True):
    """Splat N Gaussian tokens per image into a [B, C, H, W] feature map (see the module docstring).

    geometry [B, N, 5], features [B, N, C] (same float dtype and device), size (H, W) or int, box_sigma the
    box half-width in sigmas (None: no cutoff), lengths [B] int valid-token counts, normalize to divide by the
    weight sum. Differentiable in geometry and features. ``check_values`` validates sigma/rho/lengths values on
    non-CPU devices (a device sync; skipped under torch.compile; the CPU kernel always checks).
    """
    H, W = _size(size)
    s = _box(box_sigma)
    _check(geometry, features, lengths)
    if check_values and geometry.device.type != "cpu" and not torch.compiler.is_compiling():
        _check_values(geometry, lengths)
    return torch.ops.imtok_cuda.splat_render(geometry, features, H, W, s, lengths, bool(normalize))


# ---- registration: fake kernels and autograd ---------------------------------------------------------------
def _register(ns):
    lib = "{}::".format(ns)

    @torch.library.register_fake(lib + "splat_render")
    def _render_fake(geometry, features, H, W, box_sigma=3.0, lengths=None, normalize=False):
        torch._check(geometry.dim() == 3 and geometry.shape[-1] == 5, lambda: "geometry must be [B, N, 5]")
        torch._check(features.dim() == 3, lambda: "features must be [B, N, C]")
        return features.new_empty((geometry.shape[0], features.shape[2], H, W))

    @torch.library.register_fake(lib + "splat_render_backward")
    def _backward_fake(grad_out, geometry, features, out, H, W, box_sigma, lengths, normalize):
        return torch.empty_like(geometry, memory_format=torch.contiguous_format), torch.empty_like(
            features, memory_format=torch.contiguous_format)

    backward_op = getattr(torch.ops, ns).splat_render_backward

    def _setup(ctx, inputs, output):
        geometry, features, H, W, box_sigma, lengths, normalize = inputs
        ctx.H, ctx.W, ctx.box_sigma, ctx.normalize = H, W, box_sigma, normalize
        ctx.save_for_backward(geometry, features, lengths, output if normalize else None)

    def _backward(ctx, grad):
        geometry, features, lengths, out = ctx.saved_tensors
        dg, df = backward_op(grad.contiguous(), geometry, features, out, ctx.H, ctx.W, ctx.box_sigma, lengths,
                             ctx.normalize)
        return dg, df, None, None, None, None, None

    torch.library.register_autograd(lib + "splat_render", _backward, setup_context=_setup)


_register("imtok_cuda")
if hasattr(torch.ops, "imtok_cuda_emu") and hasattr(torch.ops.imtok_cuda_emu, "splat_render"):
    _register("imtok_cuda_emu")
