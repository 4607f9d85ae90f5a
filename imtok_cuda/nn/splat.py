"""The splat renderer as a torch.nn module, and the small interface the GPSToken tokenizer uses.

GPSToken's token layout is [sigma_x, sigma_y, rho, mu_x, mu_y, f_1 .. f_C]. The network predicts raw values;
``geometry_from_logits`` maps them into the renderer's domain exactly as GPSToken's generator does:
sigma = clamp(sigmoid(.), 1e-5, 0.99999), rho = clamp(2 sigmoid(.) - 1, +-0.99999),
mu = clamp(2 sigmoid(.) - 1, +-0.99999), with the bounds taken as min(0.99999, the dtype's largest value below 1)
(0.99999 rounds to 1.0 in fp16 and bf16, which the renderer rightly rejects as |rho| = 1). ``logits_from_geometry`` is its inverse (e.g. to start from
``imtok_cuda.splat.entropy_partition``). ``GaussianSplatRenderer`` renders geometry + texture to [B, C, H, W].
"""
import torch
from torch import nn

from .. import splat as _splat

__all__ = ["GaussianSplatRenderer", "geometry_from_logits", "logits_from_geometry", "split_tokens", "SIGMA_MIN",
           "SIGMA_MAX", "UNIT_MAX"]

SIGMA_MIN = 1e-5
SIGMA_MAX = 0.99999
UNIT_MAX = 0.99999  # |rho| and |mu| bound


def _below_one(dtype, bound):
    """min(bound, the largest value of dtype below 1): a bound that stays < 1 once rounded to dtype."""
    if not dtype.is_floating_point:
        return bound
    one = torch.ones((), dtype=dtype)
    return min(bound, float(torch.nextafter(one, torch.zeros((), dtype=dtype))))


def geometry_from_logits(raw):
    """Raw network outputs [..., 5] -> geometry [..., 5] = (sigma_x, sigma_y, rho, mu_x, mu_y) in the domain."""
    if raw.shape[-1] != 5:
        raise ValueError("raw must have 5 values in its last dimension, got shape {}".format(tuple(raw.shape)))
    s = torch.sigmoid(raw)
    smax, umax = _below_one(raw.dtype, SIGMA_MAX), _below_one(raw.dtype, UNIT_MAX)
    sigma = s[..., 0:2].clamp(SIGMA_MIN, smax)
    rho = (2 * s[..., 2:3] - 1).clamp(-umax, umax)
    mu = (2 * s[..., 3:5] - 1).clamp(-umax, umax)
    return torch.cat([sigma, rho, mu], dim=-1)


def logits_from_geometry(geometry):
    """Inverse of ``geometry_from_logits`` (values are first clamped into its range)."""
    if geometry.shape[-1] != 5:
        raise ValueError("geometry must have 5 values in its last dimension, got shape {}".format(
            tuple(geometry.shape)))
    smax, umax = _below_one(geometry.dtype, SIGMA_MAX), _below_one(geometry.dtype, UNIT_MAX)
    sigma = geometry[..., 0:2].clamp(SIGMA_MIN, smax)
    unit = ((geometry[..., 2:5].clamp(-umax, umax)) + 1) / 2
    return torch.cat([torch.logit(sigma), torch.logit(unit)], dim=-1)


def split_tokens(tokens):
    """GPSToken tokens [..., 5 + C] -> (geometry [..., 5], texture [..., C])."""
    if tokens.shape[-1] < 5:
        raise ValueError("tokens must have at least 5 values in the last dimension, got shape {}".format(
            tuple(tokens.shape)))
    return tokens[..., :5], tokens[..., 5:]


class GaussianSplatRenderer(nn.Module):
    """Render Gaussian tokens to a feature map: (geometry [B, N, 5], texture [B, N, C]) -> [B, C, H, W].

    size: (H, W) or int; box_sigma: box half-width in sigmas (None: no cutoff); normalize: divide by the
    per-pixel weight sum. ``forward(tokens)`` with a single [B, N, 5 + C] tensor splits GPSToken's layout;
    ``lengths`` [B] gives per-image token counts (the rest is padding). Uses imtok_cuda.splat.render (culled
    CPU/CUDA kernels, deterministic backward). No parameters.
    """

    def __init__(self, size, box_sigma=3.0, normalize=False):
        super().__init__()
        self.size = _splat._size(size)  # (H, W) of ints: TypeError naming size for 8.0 or "8"
        self.box_sigma = box_sigma
        self.normalize = normalize

    def forward(self, geometry, texture=None, lengths=None):
        if texture is None:
            geometry, texture = split_tokens(geometry)
        return _splat.render(geometry, texture, self.size, box_sigma=self.box_sigma, lengths=lengths,
                             normalize=self.normalize)

    def extra_repr(self):
        return "size={}, box_sigma={}, normalize={}".format(self.size, self.box_sigma, self.normalize)
