"""Image and codebook metrics that need no downloaded weights, and the FID plug-in that does.

PSNR and SSIM take images in [0, 1] ([B, C, H, W]) and return one value per image. SSIM is Wang et al.
2004 with an 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population statistics, computed on
the valid region and averaged over channels: the same numbers as skimage.metrics.structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=0) (tested)."""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB; inf for identical images."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range ** 2 / mse)).float()


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r * r) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image mean SSIM. Images must be at least win_size on both sides."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two [B, C, H, W] tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"ssim needs images of at least {win_size}x{win_size}, got {tuple(x.shape[-2:])}")
    x, y = x.double(), y.double()
    C = x.shape[1]
    g = _gaussian_window(win_size, sigma, x.dtype, x.device)
    wx = g.view(1, 1, 1, -1).expand(C, 1, 1, win_size)
    wy = g.view(1, 1, -1, 1).expand(C, 1, win_size, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, wx, groups=C), wy, groups=C)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


def codebook_stats(indices: torch.Tensor, codebook_size: int) -> dict:
    """Usage (fraction of codes used at least once) and perplexity exp(H) of the code histogram."""
    counts = torch.bincount(indices.reshape(-1).long(), minlength=codebook_size).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    return {"codebook_usage": float((counts > 0).double().mean()),
            "perplexity": float(torch.exp(-(nz * nz.log()).sum())),
            "codes_used": int((counts > 0).sum()), "codebook_size": int(codebook_size)}


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), as in pytorch-fid (scipy sqrtm, retried with
    1e-6 added to the diagonals when the product is singular)."""
    import numpy as np
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


def load_fid_features(spec: str | None = None):
    """(features(images in [0, 1]) -> [B, D], description) or (None, why it is skipped). Nothing is downloaded.

    spec: None or "inception" -> pytorch-fid's InceptionV3 when the package is installed and its weights
    (pt_inception-2015-12-05-6726825d.pth) are already in the torch hub cache; or a TorchScript module path."""
    if spec not in (None, "inception"):
        if not os.path.exists(spec):
            return None, f"FID skipped: feature extractor {spec!r} not found"
        net = torch.jit.load(spec).eval()
        return (lambda x: net(x)), f"TorchScript {spec}"
    weights = os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE)
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError:
        return None, "FID skipped: pytorch-fid is not installed (pip install pytorch-fid, then put its Inception " \
                     f"weights at {weights})"
    if not os.path.exists(weights):
        return None, f"FID skipped: Inception weights not found at {weights} (no download here)"
    net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    return (lambda x: net(x)[0].flatten(1)), "pytorch-fid InceptionV3 (pool3, 2048)"


def fid(features, real: torch.Tensor, fake: torch.Tensor, batch: int = 50) -> float:
    def stats(imgs):
        with torch.no_grad():
            f = torch.cat([features(c) for c in imgs.split(batch)]).double().cpu().numpy()
        import numpy as np

        return f.mean(0), np.cov(f, rowvar=False)

    return frechet_distance(*stats(real), *stats(fake))


def mean_finite(t: torch.Tensor) -> float:
    """Mean of a per-image metric; inf when every value is inf (identical images), NaN never silently."""
    t = t.double()
    if torch.isinf(t).all():
        return math.inf
    return float(t[torch.isfinite(t)].mean())
