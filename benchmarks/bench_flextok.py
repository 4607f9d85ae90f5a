"""FlexTok (imtok.tokenizers.flextok) with random weights: fused path vs the reference path
(`imtok.use_reference()`), and the encoder's causal_last mask vs SDPA with an explicit boolean mask.

Rows
- encode, decode with the direct pixel decoder, one Euler step of the rectified-flow decoder (no guidance),
  training step of the flow model (encoder + FSQ + nested dropout + flow loss, forward + backward): FlexTok
  d12-d12 (the smallest published size; d18 sizes do not fit this VM's memory and time for a train step),
  B = 8 at 256 px (quick: flextok-tiny / flextok-tiny-flow, B = 8 at 32 px);
- the mask target: the encoder's attention at the published shapes (d12: 12 heads, d18: 18 heads, 256 patches
  + 256 registers, head dim 64, B = 8), forward and forward + backward, as imtok's one fused call (causal with
  `causal_prefix` = 256) vs F.scaled_dot_product_attention with the [L, L] boolean mask; and the whole d12 encoder
  (forward, and forward + backward) with either attention.
Fused and reference (or SDPA) calls are interleaved on the same inputs (benchmarks/_common.compare). Peak memory on CPU is the resident-set high-water mark: run with MALLOC_MMAP_THRESHOLD_=65536
so that glibc maps and unmaps every large buffer (with its default dynamic threshold, freed buffers are reused
from the heap and whichever variant runs second reads ~0).
"""
import importlib

import torch
import torch.nn.functional as F

import imtok
import imtok.tokenizers as T

from ._common import compare, main

# the module (imtok.layers re-exports its function `attention` under the same name)
_attention_module = importlib.import_module("imtok.layers.attention")


def _row(op, shape, device, fused, reference, warmup, reps, notes):
    return compare("flextok", op, shape, device, fused, reference, warmup=warmup, reps=reps, notes=notes,
                   max_seconds=600.0)


def _ref(fn):
    def run():
        with imtok.use_reference():
            return fn()
    return run


def _model_rows(name, batch, size, device, warmup, reps):
    rows = []
    torch.manual_seed(0)
    x = torch.rand(batch, 3, size, size, device=device)
    shape = f"B={batch} {size}px"
    note = "reference path: explicit-softmax attention, reference FSQ"
    flow = T.create(name if "tiny" not in name else "flextok-tiny-flow").to(device)
    with torch.no_grad():
        z_q, _ = flow.eval().encode(x)

    def encode():
        with torch.no_grad():
            return flow.eval().encode(x)[0]

    def euler_step():
        with torch.no_grad():
            return flow.eval().decode(z_q, steps=1, generator=torch.Generator(device).manual_seed(0))

    def train_step():
        flow.train().zero_grad(set_to_none=True)
        torch.manual_seed(0)
        _, info = flow(x)
        info["rec_loss"].backward()
        return info["rec_loss"].detach()

    label = flow.config
    widths = f"widths {label.enc_width}/{label.dec_width}, depths {label.enc_depth}/{label.dec_depth}"
    rows.append(_row(f"{name} encode", shape, device, encode, _ref(encode), warmup, reps, f"{widths}; {note}"))
    rows.append(_row(f"{name} flow decoder, one Euler step", shape, device, euler_step, _ref(euler_step), warmup,
                     reps, f"no guidance (CFG doubles the batch); {note}"))
    rows.append(_row(f"{name} train step (flow)", shape, device, train_step, _ref(train_step), warmup, reps,
                     f"forward + backward of the flow-matching loss; {note}"))
    del flow
    pixel = T.create("flextok-tiny" if "tiny" in name else name, decoder="pixel").to(device).eval()

    def decode():
        with torch.no_grad():
            return pixel.decode(z_q)

    rows.append(_row(f"{name} decode (direct pixel decoder)", shape, device, decode, _ref(decode), warmup, reps,
                     note))
    return rows


def _mask(P, L, device):
    i = torch.arange(L, device=device)
    return ((i[:, None] < P) & (i[None, :] < P)) | ((i[:, None] >= P) & (i[None, :] <= i[:, None]))


def _mask_rows(label, batch, heads, P, R, device, warmup, reps, head_dim=64):
    L = P + R
    g = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(batch, heads, L, head_dim, generator=g, device=device).requires_grad_() for _ in range(3))
    grad = torch.randn(batch, heads, L, head_dim, generator=g, device=device)
    mask = _mask(P, L, device)

    def ours():
        with torch.no_grad():
            return _attention_module.attention(q, k, v, causal=True, causal_prefix=P)

    def sdpa():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(P, L, device))

    def ours_bwd():
        return torch.autograd.grad(_attention_module.attention(q, k, v, causal=True, causal_prefix=P), (q, k, v), grad)

    def sdpa_bwd():
        return torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(P, L, device)),
                                   (q, k, v), grad)

    shape = f"B={batch} H={heads} P={P} R={R} d={head_dim}"
    note = f"baseline: SDPA with the [L, L] bool mask ({mask.numel() / 2**20:.2f} MiB, built per call)"
    return [_row(f"{label} encoder attention, causal_last mask", shape, device, ours, sdpa, warmup, reps, note),
            _row(f"{label} encoder attention fwd+bwd, causal_last mask", shape, device, ours_bwd, sdpa_bwd, warmup,
                 reps, note)]


def _dense_mask_attention(q, k, v, *, causal_prefix=0, **kwargs):
    """imtok.layers.attention with the prefix-LM mask given to SDPA as an explicit boolean mask."""
    if not causal_prefix:
        return _ORIGINAL_ATTENTION(q, k, v, **kwargs)
    mask = _mask(int(causal_prefix), q.shape[2], q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=kwargs.get("scale"))


_ORIGINAL_ATTENTION = _attention_module.attention


def _with_dense_mask(fn):
    def run():
        _attention_module.attention = _dense_mask_attention
        try:
            return fn()
        finally:
            _attention_module.attention = _ORIGINAL_ATTENTION
    return run


def _encoder_rows(name, batch, size, device, warmup, reps):
    tok = T.create(name).to(device)
    enc = tok.encoder
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1

    def forward():
        with torch.no_grad():
            return enc(x)

    def train():
        enc.zero_grad(set_to_none=True)
        out = enc(x)
        out.square().mean().backward()
        return out.detach()

    shape = f"B={batch} {size}px"
    note = "whole encoder (patch embed, blocks, registers out); baseline: every block's attention as SDPA + bool mask"
    return [_row(f"{name} encoder forward, causal_last mask", shape, device, forward, _with_dense_mask(forward),
                 warmup, reps, note),
            _row(f"{name} encoder fwd+bwd, causal_last mask", shape, device, train, _with_dense_mask(train), warmup,
                 reps, note)]


def run(device="cpu", quick=False):
    torch.manual_seed(0)
    if quick:
        rows = _model_rows("flextok-tiny", 8, 32, device, warmup=1, reps=3)
        rows += _mask_rows("flextok-tiny", 8, 4, 64, 32, device, warmup=1, reps=5, head_dim=32)
        rows += _encoder_rows("flextok-tiny", 8, 32, device, warmup=1, reps=5)
        return rows
    rows = _mask_rows("d12", 8, 12, 256, 256, device, warmup=1, reps=5)
    rows += _mask_rows("d18", 8, 18, 256, 256, device, warmup=1, reps=5)
    rows += _encoder_rows("flextok-d12-d12", 8, 256, device, warmup=1, reps=3)
    rows += _model_rows("flextok-d12-d12", 8, 256, device, warmup=0, reps=1)
    return rows


if __name__ == "__main__":
    main(run)
