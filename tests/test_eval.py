"""imtok.eval: metrics against known values and an independent implementation (scikit-image), and the
evaluation of a tiny tokenizer (robustness, rate-distortion, FID skipped without weights)."""
import math
import os

import numpy as np
import pytest
import torch

from imtok.eval import codebook_stats, evaluate_tokenizer, format_metrics, frechet_distance, plot_rate_distortion
from imtok.eval import psnr, ssim
from imtok.eval.evaluate import rate_distortion_lengths


def test_psnr_known_values():
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8
    assert torch.isinf(psnr(x, x)).all()
    # a constant offset of 0.1 is an MSE of 0.01: exactly 20 dB
    assert torch.allclose(psnr(x + 0.1, x), torch.full((3,), 20.0), atol=1e-5)
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    mse = ((noisy - x) ** 2).flatten(1).mean(1).double()
    assert torch.allclose(psnr(noisy, x).double(), -10 * torch.log10(mse), atol=1e-4)
    big = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    noise = 0.05 * torch.randn(big.shape, generator=torch.Generator().manual_seed(3))
    assert abs(float(psnr(big + noise, big)) - 26.02) < 0.1  # Gaussian noise, sigma 0.05: 20 log10(1 / 0.05) dB


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 20, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ours = ssim(y, x)
    for b in range(2):
        ref = structural_similarity(x[b].numpy().astype(np.float64), y[b].numpy().astype(np.float64),
                                    channel_axis=0, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert abs(float(ours[b]) - ref) < 1e-5, (float(ours[b]), ref)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[..., :8, :8], y[..., :8, :8])


def test_codebook_stats_known_values():
    s = codebook_stats(torch.tensor([0, 1, 2, 3] * 5), 8)
    assert s["codebook_usage"] == 0.5 and s["codes_used"] == 4
    assert abs(s["perplexity"] - 4.0) < 1e-9
    assert abs(codebook_stats(torch.zeros(10, dtype=torch.long), 8)["perplexity"] - 1.0) < 1e-12


def test_frechet_distance_known_values():
    assert abs(frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3))) < 1e-9
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert abs(frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]) - (4 + 1)) < 1e-9


def test_rate_distortion_lengths():
    assert rate_distortion_lengths(8) == [1, 2, 4, 8]
    assert rate_distortion_lengths(12) == [1, 2, 4, 8, 12]
    assert rate_distortion_lengths(1) == [1]


def test_evaluate_tiny_1d_tokenizer(tmp_path):
    from _tiny_tokenizer import Tiny1D

    torch.manual_seed(0)
    model = Tiny1D(size=16)
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    res, recon = evaluate_tokenizer(model, images, batch=4, perturb_alphas=(0.0, 1.0), perturb_delta=8,
                                    log=lambda m: None)
    assert recon.shape == images.shape
    with torch.no_grad():
        tokens = model.encode(images)[1]["min_encoding_indices"]
        expected = float(psnr(model.decode_tokens(tokens).clamp(0, 1), images).mean())
    assert abs(res["psnr"] - expected) < 1e-4
    assert res["tokens_per_image"] == 8 and 0 < res["codebook_usage"] <= 1
    rob = res["robustness"]
    assert rob["psnr_drop"]["0.0"] == 0.0  # alpha 0 perturbs nothing
    assert rob["delta"] == 8
    lengths = [L for L, _ in res["rate_distortion"]]
    assert lengths == [1, 2, 4, 8]
    assert abs(res["rate_distortion"][-1][1] - res["psnr"]) < 1e-4  # all tokens = the plain reconstruction
    if "fid" not in res:
        assert "FID skipped" in res["skipped"]["fid"]
    assert "| PSNR |" in format_metrics(res)
    plot_rate_distortion(res["rate_distortion"], str(tmp_path / "rd.png"), references={"mean colour": 15.0})
    assert os.path.getsize(tmp_path / "rd.png") > 1000


def test_baselines_known_values():
    from imtok.eval.evaluate import baselines

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g)
    # the mean colour's squared error is each channel's variance (population)
    var = x.flatten(2).var(2, unbiased=False).mean(1).double()
    b = baselines(x)
    assert b["mean colour"]["psnr"] == pytest.approx(float((-10 * torch.log10(var)).mean()), abs=1e-4)
    assert b["mean colour"]["numbers"] == 3 and b["4x4 average, bilinear"]["numbers"] == 48
    flat = torch.full((2, 3, 16, 16), 0.25)
    b = baselines(flat)
    assert math.isinf(b["mean colour"]["psnr"]) and math.isinf(b["4x4 average, bilinear"]["psnr"])
    assert b["mean colour"]["ssim"] == pytest.approx(1.0)
    assert "ssim" not in baselines(torch.rand(1, 3, 8, 8))["mean colour"]


def test_evaluate_2d_tokenizer_has_no_rate_distortion():
    from _tiny_tokenizer import TinyVQ

    torch.manual_seed(0)
    res, _ = evaluate_tokenizer(TinyVQ(), torch.rand(2, 3, 16, 16), perturb_alphas=(0.5,), log=lambda m: None)
    assert "rate_distortion" not in res and "1D" in res["skipped"]["rate_distortion"]
    assert math.isfinite(res["robustness"]["psnr_drop"]["0.5"])


def test_evaluate_continuous_tokenizer():
    """GPSToken's tokens are continuous Gaussians: PSNR of decode(encode(x)), no codebook metrics."""
    pytest.importorskip("torchvision", reason="GPSToken's encoder needs torchvision (the [gpstoken] extra)")
    import imtok.tokenizers as T
    from imtok.eval.metrics import psnr as psnr_fn

    torch.manual_seed(0)
    tok = T.create("gpstoken-tiny").eval()
    x = torch.rand(2, 3, 32, 32)
    res, recon = evaluate_tokenizer(tok, x, log=lambda m: None)
    with torch.no_grad():
        expected = tok.decode(tok.encode(x)[0]).float().clamp(0, 1)
    assert torch.equal(recon, expected)
    assert res["psnr"] == pytest.approx(float(psnr_fn(expected, x).mean()), rel=1e-6)
    assert res["continuous_latent_shape"] == [tok.config.num_tokens, 5 + tok.config.texture_channels]
    assert "codebook_usage" not in res and "robustness" not in res and "rate_distortion" not in res
    assert "continuous latents per image" in format_metrics(res)
    # images at twice the tokenizer's size: encoded as patches, decoded at scale 2 (GPSToken at 512 px)
    x2 = torch.rand(2, 3, 64, 64)
    res, recon = evaluate_tokenizer(tok, x2, log=lambda m: None)
    with torch.no_grad():
        expected = tok.decode(tok.encode(x2)[0], scale=2).float().clamp(0, 1)
    assert torch.equal(recon, expected)
    assert res["continuous_latent_shape"] == [4 * tok.config.num_tokens, 5 + tok.config.texture_channels]
