"""GPSToken and the binary 1D tokenizer at published sizes with random weights: fused path vs the reference path
(`imtok.use_reference()`: dense splat renderer, explicit-softmax attention), same weights, same inputs, calls
interleaved (benchmarks/_common.compare: median, spread, load average, peak extra memory of one call).

Rows
- gpstoken render (the splat in the training step, forward + backward): B = 8, 128 tokens, 16 channels,
  64 x 64 (gpstoken-m128's shape; quick: gpstoken-tiny's, 16 tokens, 8 channels, 16 x 16);
- gpstoken-m128 encode / decode / training step (forward + backward of the L2 loss; the entropy partition is
  computed once outside the timed calls, as GPSToken's data loader does) and binary-b-128 encode / decode /
  training step, at B = IMTOK_BENCH_BATCH (default 8, the issue's size) at 256 px (quick: the -tiny sizes, B = 8
  at 32 px).
"""
import os

import torch
import torch.nn.functional as F

import imtok
import imtok.tokenizers as T

from ._common import compare, main

MODEL_BATCH = int(os.environ.get("IMTOK_BENCH_BATCH", 8))


def _ref(fn):
    def run():
        with imtok.use_reference():
            return fn()
    return run


def _render_row(name, batch, device, reps):
    tok = T.create(name).to(device)
    c = tok.config
    size = c.image_size
    x = torch.rand(batch, 3, size, size, device=device)
    geometry = tok.initial_geometry(x).to(device)
    texture = torch.randn(batch, c.num_tokens, c.texture_channels, device=device)
    target = torch.randn(batch, c.texture_channels, c.render_size, c.render_size, device=device)

    def step():
        z = torch.cat([geometry, texture], -1).requires_grad_()
        F.mse_loss(tok.render(z), target).backward()
        return z.grad

    return compare("gpstoken", f"{name} render forward + backward", f"B={batch} N={c.num_tokens} "
                   f"C={c.texture_channels} {c.render_size}x{c.render_size}", device, step, _ref(step), warmup=1,
                   reps=reps, notes="reference: dense [B, N, H, W] renderer")


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
        return rows
    big = str(device) == "cpu"  # one call of a published-size step takes minutes on a small CPU
    rows = [_render_row("gpstoken-m128", 8, device, reps=5)]
    for name in ("gpstoken-m128", "binary-b-128"):
        rows += _model_rows(name, MODEL_BATCH, device, reps=1 if big else 5, warmup=0 if big else 1)
    return rows


if __name__ == "__main__":
    main(run)
