"""Evaluate a tokenizer on held-out images: reconstruction quality, codebook use, robustness to token
perturbation (RobusTok protocol), rate-distortion for 1D tokenizers, FID when its weights are present."""
from __future__ import annotations

import inspect

import torch

from .metrics import codebook_stats, fid, load_fid_features, mean_finite, psnr, ssim


def _batches(x, n):
    return x.split(n) if n else [x]


def _tokens(model, x):
    """Discrete tokens, or the continuous latents of a tokenizer without a quantizer (GPSToken's Gaussians)."""
    z, info = model.encode(x)
    tokens = info.get("min_encoding_indices")
    return z if tokens is None else tokens


def _decode_scale(model, x) -> dict:
    """scale= for tokenizers that encode images larger than their own size as patches and decode at that
    scale (GPSToken at 512 / 1024 px); nothing for the others."""
    size = getattr(getattr(model, "config", None), "image_size", None)
    try:
        takes = "scale" in inspect.signature(model.decode).parameters
    except (AttributeError, TypeError, ValueError):
        takes = False
    return {"scale": x.shape[-1] // size} if takes and size and x.shape[-1] != size else {}


def _decode(model, tokens, length=None, **scale):
    if tokens.is_floating_point():
        out = model.decode(tokens, **scale)
    elif length is None:
        out = model.decode_tokens(tokens)
    else:
        lengths = torch.full((tokens.shape[0],), int(length), dtype=torch.long, device=tokens.device)
        out = model.decode_tokens(tokens, lengths=lengths)
    return out.float().clamp(0, 1)


def codebook_size(model) -> int | None:
    if isinstance(getattr(model, "codebook_size", None), int):
        return model.codebook_size
    vq = _vector_quantizer(model)
    return vq.codebook_size if vq is not None else None


def _vector_quantizer(model):
    """The first nearest-code quantizer (imtok_cuda.nn.VectorQuantizer or imtok.layers.quantize.VectorQuantize:
    both have codebook_size and a codebook, a property or a method)."""
    return next((m for m in model.modules() if hasattr(m, "codebook") and hasattr(m, "codebook_size")
                 and m is not model), None)


def _codebook(vq) -> torch.Tensor:
    cb = vq.codebook() if callable(vq.codebook) else vq.codebook
    return cb.detach()


def num_tokens_1d(model) -> int | None:
    """N for tokenizers whose decode_tokens takes lengths= (TiTok-style 1D, One-D-Piece, FlexTok)."""
    n = getattr(model, "num_latent_tokens", None)
    try:
        takes = "lengths" in inspect.signature(model.decode_tokens).parameters
    except (AttributeError, TypeError, ValueError):
        takes = False
    return n if (n and takes) else None


def baselines(images: torch.Tensor) -> dict:
    """Codec-free reference points on the same images: each image's mean colour (3 numbers) and its 4x4 average
    pooling upsampled bilinearly (48 numbers), as {name: {"psnr", "ssim" (images >= 11 px), "numbers"}}.
    Smooth crops score high here; a tokenizer should beat them before its PSNR means much."""
    import torch.nn.functional as F

    out = {}
    for name, s in (("mean colour", 1), ("4x4 average, bilinear", 4)):
        y = F.interpolate(F.adaptive_avg_pool2d(images.float(), s), size=images.shape[-2:], mode="bilinear")
        out[name] = {"psnr": mean_finite(psnr(y, images)), "numbers": 3 * s * s}
        if min(images.shape[-2:]) >= 11:
            out[name]["ssim"] = float(ssim(y, images).mean())
    return out


def rate_distortion_lengths(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    out, L = [], 1
    while L < n:
        out.append(L)
        L *= 2
    return out + [n]


@torch.no_grad()
def evaluate_tokenizer(model, images: torch.Tensor, batch: int = 64, perturb_alphas=(0.1, 0.3, 0.5),
                       perturb_delta: int = 100, rate_distortion: bool = True, fid_spec: str | None = None,
                       seed: int = 0, log=print) -> dict:
    """images: [B, 3, H, W] in [0, 1] (held-out). Returns (metrics, reconstructions); metrics that need
    something missing are absent and the reason is under metrics["skipped"]."""
    model.eval()
    device = next(model.parameters()).device
    recons, tokens = [], []
    for x in _batches(images, batch):
        x = x.to(device)
        t = _tokens(model, x)
        tokens.append(t)
        recons.append(_decode(model, t, **_decode_scale(model, x)).cpu())
    recon, tokens = torch.cat(recons), torch.cat(tokens)
    res = {"num_images": images.shape[0], "image_size": list(images.shape[-2:]), "psnr":
           mean_finite(psnr(recon, images))}
    if tokens.is_floating_point():
        res["continuous_latent_shape"] = list(tokens.shape[1:])
    else:
        res["tokens_per_image"] = int(tokens[0].numel())
    res["baselines"] = baselines(images)
    skipped = {}
    if min(images.shape[-2:]) >= 11:
        res["ssim"] = float(ssim(recon, images).mean())
    else:
        skipped["ssim"] = "images smaller than the 11x11 window"
    K = codebook_size(model)
    if K and not tokens.is_floating_point():
        res.update(codebook_stats(tokens, K))
    vq = _vector_quantizer(model)
    if vq is not None and perturb_alphas and not tokens.is_floating_point():
        from imtok_cuda.vq import latent_perturbation

        cb = _codebook(vq)
        delta = min(int(perturb_delta), cb.shape[0], 128)
        gen = torch.Generator(device=device).manual_seed(seed)
        metric = getattr(vq, "metric", "l2")
        rob = {}
        for alpha in perturb_alphas:
            vals = []
            for x, t in zip(_batches(images, batch), _batches(tokens, batch)):
                # tokens are perturbed around their own codes: the continuous latents are not part of the API
                new = latent_perturbation(cb[t], cb, t, alpha=alpha, beta=1.0, delta=delta, metric=metric,
                                          generator=gen)
                vals.append(psnr(_decode(model, new).cpu(), x))
            rob[str(alpha)] = mean_finite(torch.cat(vals))
        res["robustness"] = {"delta": delta, "psnr": rob,
                             "psnr_drop": {a: res["psnr"] - v for a, v in rob.items()}}
    elif perturb_alphas:
        skipped["robustness"] = "no VectorQuantizer in the tokenizer (the RobusTok protocol perturbs VQ codes)"
    n = None if tokens.is_floating_point() else num_tokens_1d(model)
    if rate_distortion and n:
        curve = []
        for L in rate_distortion_lengths(n):
            vals = [psnr(_decode(model, t, L).cpu(), x) for x, t in zip(_batches(images, batch),
                                                                         _batches(tokens, batch))]
            curve.append((L, mean_finite(torch.cat(vals))))
        res["rate_distortion"] = curve
    elif rate_distortion:
        skipped["rate_distortion"] = "not a 1D tokenizer with decode_tokens(..., lengths=)"
    features, why = load_fid_features(fid_spec)
    if features is None:
        skipped["fid"] = why
        log(why)
    elif images.shape[0] < 2:
        skipped["fid"] = "needs at least 2 images"
    else:
        res["fid"] = fid(features, images, recon)
        res["fid_features"] = why
    if skipped:
        res["skipped"] = skipped
    return res, recon


def plot_rate_distortion(curve, path: str, title: str = "rate-distortion (held-out)", references: dict | None = None):
    """PSNR vs tokens decoded (log2 axis); references {name: PSNR} drawn as dashed horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = [c[0] for c in curve], [c[1] for c in curve]
    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=110)
    ax.plot(xs, ys, "o-", color="#1f6fb4", label="tokenizer")
    for (name, value), colour in zip((references or {}).items(), ("#888888", "#d0802a", "#4a9a4a")):
        ax.axhline(value, ls="--", lw=1, color=colour, label=name)
    if references:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel("tokens decoded")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_metrics(res: dict) -> str:
    """Markdown lines for report.md / the terminal."""
    lines = [f"| held-out crops | {res['num_images']} x {res['image_size'][0]}x{res['image_size'][1]} |",
             f"| tokens per image | {res['tokens_per_image']} |" if "tokens_per_image" in res else
             f"| continuous latents per image | {' x '.join(map(str, res['continuous_latent_shape']))} |",
             f"| PSNR | {res['psnr']:.2f} dB |"]
    if "ssim" in res:
        lines.append(f"| SSIM | {res['ssim']:.4f} |")
    if "codebook_usage" in res:
        lines.append(f"| codebook usage | {res['codes_used']} / {res['codebook_size']} "
                     f"({100 * res['codebook_usage']:.1f}%) |")
        lines.append(f"| code perplexity | {res['perplexity']:.1f} |")
    if "robustness" in res:
        r = res["robustness"]
        for a, drop in r["psnr_drop"].items():
            lines.append(f"| PSNR drop, tokens perturbed (alpha {a}, delta {r['delta']}) | {drop:.2f} dB |")
    if "fid" in res:
        lines.append(f"| rFID ({res['fid_features']}) | {res['fid']:.2f} |")
    for name, v in res.get("baselines", {}).items():
        ssim_part = f", SSIM {v['ssim']:.4f}" if "ssim" in v else ""
        lines.append(f"| reference point, no tokens: the {name} ({v['numbers']} numbers per crop) | "
                     f"PSNR {v['psnr']:.2f} dB{ssim_part} |")
    head = "| metric | value |\n|---|---|\n"
    out = head + "\n".join(lines)
    for k, why in res.get("skipped", {}).items():
        out += f"\n\n{k}: {why}"
    return out
