"""Tokenizer evaluation: PSNR, SSIM, codebook usage and perplexity, robustness to token perturbation
(RobusTok protocol), rate-distortion for 1D tokenizers, FID when Inception weights are present locally."""
from .evaluate import evaluate_tokenizer, format_metrics, plot_rate_distortion
from .metrics import codebook_stats, fid, frechet_distance, load_fid_features, psnr, ssim

__all__ = ["evaluate_tokenizer", "format_metrics", "plot_rate_distortion", "psnr", "ssim", "codebook_stats",
           "frechet_distance", "fid", "load_fid_features"]
