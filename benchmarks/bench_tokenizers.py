"""Tokenizers (imtok.tokenizers) at published sizes with random weights: fused path vs the reference path
(`imtok.use_reference()`), same weights, same inputs, same run.

Rows
- encode / decode / training step (forward + backward of mse + quantizer loss; the same tail-drop lengths on both
  paths) of LlamaGen VQ-16, TiTok-S-128 and One-D-Piece-S-256, B = 8 at 256 px (quick: the -tiny sizes, B = 8 at
  32 px). Full mode times every repetition it is asked for (one training step: 40 s to 4.5 min on 2 busy cores);
- the VQ-16 quantizer training step at B = 32 (N = 8192 vectors, K = 16384 codes, D = 8): peak memory vs the
  reference, which builds the N x K distance matrix (512 MiB in fp32) and its temporaries (quick: B = 8);
- One-D-Piece decoding of 16 images with random per-sample lengths (S-256; quick: one-d-piece-tiny): one packed
  pass vs one pass per distinct length over the images of that length (what a user of the anchor, which takes
  one length per call, does at best), and vs the anchor's own call pattern, the whole batch once per distinct
  length.
"""

import torch
import torch.nn.functional as F

import imtok
import imtok.tokenizers as T
from imtok.layers.quantize import VectorQuantize

from ._common import compare, main


def _ref(fn):
    def run():
        with imtok.use_reference():
            return fn()
    return run


def _model_rows(name, batch, size, device, reps, ops=("encode", "decode", "train step"), max_seconds=40.0):
    tok = T.create(name).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    shape = f"B={batch} {size}px"
    with torch.no_grad():
        z_q, _ = tok.eval().encode(x)

    def encode():
        with torch.no_grad():
            return tok.eval().encode(x)[0]

    def decode():
        with torch.no_grad():
            return tok.eval().decode(z_q)

    def train_step():
        torch.manual_seed(0)  # the same tail-drop lengths (One-D-Piece) on every call and on both paths
        tok.train().zero_grad(set_to_none=True)
        recon, info = tok(x)
        (F.mse_loss(recon, x) + info["quantizer_loss"]).backward()
        return info["quantizer_loss"].detach()

    fns = {"encode": encode, "decode": decode, "train step": train_step}
    rows = [compare("tokenizers", f"{name} {op}", shape, device, fns[op], _ref(fns[op]), warmup=1, reps=reps,
                    notes="reference path: explicit-softmax attention, N x K distance matrix", max_seconds=max_seconds)
            for op in ops]
    del tok
    return rows


def _quantizer_row(batch, device, reps, max_seconds=40.0):
    vq = VectorQuantize(16384, 8, beta=0.25, l2_norm=True).to(device).train()
    z = torch.randn(batch, 16, 16, 8, device=device)
    n = z.numel() // 8

    def step():
        zz = z.detach().requires_grad_()
        z_q, _, info = vq(zz)
        (z_q.square().mean() + info["quantizer_loss"]).backward()
        return zz.grad

    return compare("tokenizers", "llamagen-vq16 quantizer train step", f"B={batch} N={n} K=16384 D=8", device,
                   step, _ref(step), warmup=1, reps=reps, max_seconds=max_seconds,
                   notes=f"N x K fp32 = {n * 16384 * 4 / 2**20:.0f} MiB")


def _lengths_rows(device, reps, name="one-d-piece-s-256", size=256, num_images=16, max_seconds=40.0,
                  anchor_calls=True):
    tok = T.create(name).to(device).eval()
    g = torch.Generator().manual_seed(0)
    N = tok.num_latent_tokens
    tokens = torch.randint(0, tok.codebook_size, (num_images, N), generator=g).to(device)
    lengths = torch.randint(1, N + 1, (num_images,), generator=g).to(device)
    distinct = sorted(set(lengths.tolist()))
    shape = f"{num_images} images, {len(distinct)} distinct lengths, {size}px"

    def one_pass():
        with torch.no_grad():
            return tok.decode_tokens(tokens, lengths=lengths)

    def per_length_subsets():
        out = torch.empty(num_images, 3, size, size, device=device)
        with torch.no_grad():
            for n in distinct:
                sel = (lengths == n).nonzero()[:, 0]
                out[sel] = tok.decode_tokens(tokens[sel, :n])
        return out

    def per_length_whole_batch():
        out = torch.empty(num_images, 3, size, size, device=device)
        with torch.no_grad():
            for n in distinct:
                sel = lengths == n
                out[sel] = tok.decode_tokens(tokens[:, :n])[sel]
        return out

    rows = [compare("tokenizers", f"{name} decode per-sample lengths: one packed pass vs per-length subsets", shape,
                    device, one_pass, per_length_subsets, warmup=1, reps=reps, max_seconds=max_seconds,
                    notes="baseline: one decode per distinct length over the images that have it")]
    if anchor_calls:  # the whole batch once per distinct length: about as many full decodes as images
        rows.append(compare("tokenizers", f"{name} decode per-sample lengths: one packed pass vs anchor calls", shape,
                            device, one_pass, per_length_whole_batch, warmup=0, reps=max(1, reps // 2),
                            max_seconds=max_seconds,
                            notes="baseline: the anchor's decode(batch, length) once per distinct length"))
    return rows


def run(device="cpu", quick=False):
    torch.manual_seed(0)
    reps = 2 if quick else 3
    rows = []
    if quick:
        for name in ("titok-tiny", "one-d-piece-tiny", "vqgan-tiny"):
            rows += _model_rows(name, 8, 32, device, reps)
        rows.append(_quantizer_row(8, device, reps))
        rows += _lengths_rows(device, reps, name="one-d-piece-tiny", size=32)
    else:  # every repetition asked for is timed, however long (max_seconds=None)
        for name in ("titok-s-128", "one-d-piece-s-256", "llamagen-vq16"):
            rows += _model_rows(name, 8, 256, device, reps, max_seconds=None)
        rows.append(_quantizer_row(32, device, reps, max_seconds=None))
        rows += _lengths_rows(device, reps, max_seconds=None)
    return rows


if __name__ == "__main__":
    main(run)
