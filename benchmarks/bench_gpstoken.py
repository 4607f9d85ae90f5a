"""GPSToken and the binary 1D tokenizer at published sizes with random weights: fused path vs the reference path
(`imtok.use_reference()`: dense splat renderer, explicit-softmax attention), same weights, same inputs, calls
interleaved (benchmarks/_common.compare: median, spread, load average, peak extra memory of one call).

Rows
- gpstoken render (the splat in the training step, forward + backward): B = 8, 128 tokens, 16 channels,
  64 x 64 (gpstoken-m128's shape; quick: gpstoken-tiny's, 16 tokens, 8 channels, 16 x 16);
- gpstoken-m128 encode / decode / training step (forward + backward of the L2 loss; the entropy partition is
  computed once outside the timed calls, as GPSToken's data loader does) and binary-b-128 encode / decode /
  training step, at B = IMTOK_BENCH_BATCH (default 8, the issue's size) at 256 px (quick: the -tiny sizes, B = 8
  at 32 px);
- gpstoken-m128 at 512 px (2 x 2 patches of 256, merged tokens, decode(scale=2)), B = 1: the render of the 512
  merged Gaussians at 128 x 128 (forward + backward) and decode (render + CNN decoder with per-patch
  statistics), on the merged partition geometry with random texture (quick: gpstoken-tiny at 64 px, 64
  Gaussians at 32 x 32).
"""
import os

import torch
import torch.nn.functional as F

import imtok
import imtok.tokenizers as T
from imtok.tokenizers.gpstoken import merge_patch_tokens

from ._common import compare, main

MODEL_BATCH = int(os.environ.get("IMTOK_BENCH_BATCH", 8))


def _ref(fn):
    def run():
        with imtok.use_reference():
            return fn()
    return run


def _tokens(tok, batch, scale, device):
    """Merged tokens of `batch` random images of side scale * image_size: the patches' partitions (as encode
    computes them) with random texture."""
    c = tok.config
    s = c.image_size
    patches = torch.rand(batch * scale * scale, 3, s, s)
    geometry = tok.initial_geometry(patches)
    texture = torch.randn(batch * scale * scale, c.num_tokens, c.texture_channels)
    return merge_patch_tokens(torch.cat([geometry, texture], -1), scale).to(device)


def _render_row(name, batch, device, reps, scale=1):
    tok = T.create(name).to(device)
    c = tok.config
    z0 = _tokens(tok, batch, scale, device)
    rs = scale * c.render_size
    target = torch.randn(batch, c.texture_channels, rs, rs, device=device)

    def step():
        z = z0.clone().requires_grad_()
        F.mse_loss(tok.render(z, scale), target).backward()
        return z.grad

    op = f"{name} render forward + backward" + (f" ({scale * c.image_size} px)" if scale > 1 else "")
    return compare("gpstoken", op, f"B={batch} N={z0.shape[1]} C={c.texture_channels} {rs}x{rs}", device, step,
                   _ref(step), warmup=1, reps=reps, notes="reference: dense [B, N, H, W] renderer")


def _decode_row(name, batch, scale, device, reps, warmup):
    torch.manual_seed(0)
    tok = T.create(name).to(device).eval()
    z = _tokens(tok, batch, scale, device)

    def decode():
        with torch.no_grad():
            return tok.decode(z, scale=scale)

    size = scale * tok.config.image_size
    return compare("gpstoken", f"{name} decode ({size} px, {scale}x{scale} patches merged)",
                   f"B={batch} N={z.shape[1]} render {scale * tok.config.render_size}^2 -> {size}px", device, decode,
                   _ref(decode), warmup=warmup, reps=reps, max_seconds=600.0,
                   notes="render + CNN decoder with per-patch norm statistics; reference: dense splat renderer, "
                         "explicit-softmax attention")


def _model_rows(name, batch, device, reps, warmup):
    torch.manual_seed(0)
    tok = T.create(name).to(device)
    size = tok.config.image_size
    x = torch.rand(batch, 3, size, size, device=device)
    gps = isinstance(tok, T.GPSToken)
    extra = {"init_geometry": tok.initial_geometry(x).to(device)} if gps else {}
    with torch.no_grad():
        z, _ = tok.eval().encode(x, **extra)

    def encode():
        with torch.no_grad():
            return tok.eval().encode(x, **extra)[0]

    def decode():
        with torch.no_grad():
            return tok.eval().decode(z)

    def train_step():
        tok.train().zero_grad(set_to_none=True)
        recon, info = tok(x, **extra)
        loss = F.mse_loss(recon, x) + info.get("quantizer_loss", 0)
        loss.backward()
        return loss.detach()

    notes = "reference: dense splat renderer, explicit-softmax attention" if gps else \
        "reference: explicit-softmax attention"
    return [compare(tok.family, f"{name} {op}", f"B={batch} {size}px", device, fn, _ref(fn), warmup=warmup, reps=reps,
                    notes=notes, max_seconds=600.0)
            for op, fn in (("encode", encode), ("decode", decode), ("train step", train_step))]


def run(device="cpu", quick=False):
    torch.manual_seed(0)
    if quick:
        rows = [_render_row("gpstoken-tiny", 8, device, reps=5)]
        for name in ("gpstoken-tiny", "binary-tiny"):
            rows += _model_rows(name, 8, device, reps=3, warmup=1)
        rows += [_render_row("gpstoken-tiny", 1, device, reps=5, scale=2),
                 _decode_row("gpstoken-tiny", 1, 2, device, reps=3, warmup=1)]
        return rows
    big = str(device) == "cpu"  # one call of a published-size step takes minutes on a small CPU
    rows = [_render_row("gpstoken-m128", 8, device, reps=5)]
    for name in ("gpstoken-m128", "binary-b-128"):
        rows += _model_rows(name, MODEL_BATCH, device, reps=1 if big else 5, warmup=0 if big else 1)
    rows += [_render_row("gpstoken-m128", 1, device, reps=5, scale=2),
             _decode_row("gpstoken-m128", 1, 2, device, reps=3 if big else 5, warmup=0 if big else 1)]
    return rows


if __name__ == "__main__":
    main(run)
