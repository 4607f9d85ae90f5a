"""generators: whole AR decoding (fused sampling + attention path vs the reference path, and vs the official
LlamaGen generate when its code is present), grouped speculative decoding vs plain AR decoding.

Rows:
  AR decode + CFG      LlamaGen GPT-B sized random weights (vocab 16384), B = 8, 256 tokens, cfg 4.0,
                       top_k 2000 (LlamaGen's sample_c2i defaults); fused = default path, ref = imtok.use_reference()
                       (reference attention + sampling); official = LlamaGen's generate() with the same weights
                       when IMTOK_LLAMAGEN_REPO points at a LlamaGen checkout.
  GSD / SJD vs plain   a small GPT briefly trained on synthetic class-conditional token grids (random weights in
                       quick mode), one image at a time, cfg 2, temperature 1, draft 16; forward passes per image
                       (mean over the timed runs) and wall time. "fused" = speculative, "ref" = plain.
  The synthetic tokens come in groups of 4 close codes of an 8-dim l2-normalised codebook (LlamaGen's VQ codes
  are 8-dim and l2-normalised): the context fixes the group, the code inside it is uniform. GSD's distance
  filter gets that codebook; with the model's own token embeddings (the default when none is passed) almost no
  pair is close enough and GSD behaves as SJD.
Quick mode: a 2-layer width-256 GPT, 32 tokens, B = 4; the GSD model keeps random weights.
"""
import contextlib
import os
import sys

import torch

import imtok
import imtok.generators as G

from ._common import compare, main


def _official_generate(model, repo):
    """LlamaGen's Transformer with our weights and its generate(), or None when the repo is not there."""
    if not repo or not os.path.isdir(os.path.join(repo, "autoregressive")):
        return None
    sys.path.insert(0, repo)
    if not hasattr(torch.backends.cuda, "sdp_kernel"):
        torch.backends.cuda.sdp_kernel = lambda **kw: contextlib.nullcontext()
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import ModelArgs, Transformer

    cfg = {k: v for k, v in model.config.items() if k not in ("rope", "shuffle")}
    official = Transformer(ModelArgs(**cfg)).eval()
    state = {k.replace(".attention.qkv.", ".attention.wqkv.").replace(".attention.proj.", ".attention.wo."): v
             for k, v in model.state_dict().items()}
    official.load_state_dict(state, strict=False)
    return lambda cond, n, **kw: generate(official, cond, n, **kw)


def _ar_rows(device, quick):
    torch.manual_seed(0)
    if quick:
        model = G.create("llamagen-gpt-tiny", dim=256, n_layer=2, n_head=4, vocab_size=16384, block_size=64,
                         num_classes=1000)
        B, n, label = 4, 32, "GPT 2x256 (quick)"
    else:
        model = G.create("llamagen-gpt-b", vocab_size=16384, block_size=256)
        B, n, label = 8, 256, "GPT-B 111M"
    with torch.no_grad():  # the published init zeroes the head: give it weights so the logits are not flat
        model.output.weight.normal_(0.0, 0.02)
    model = model.to(device).eval()
    cond = torch.arange(B, device=device)
    kw = dict(cfg_scale=4.0, temperature=1.0, top_k=2000, top_p=1.0)

    def fused():
        return model.generate(cond, n, generator=torch.Generator(device).manual_seed(0), **kw)

    def reference():
        with imtok.use_reference():
            return model.generate(cond, n, generator=torch.Generator(device).manual_seed(0), **kw)

    reps = 1 if not quick else 2
    shape = f"{label}, B={B}, {n} tokens, cfg 4, top-k 2000"
    row = compare("generators", "AR decode (fused sampling+attention) vs reference path", shape, device, fused,
                  reference, warmup=1, reps=reps, measure_memory=False)
    row["fused_tokens_per_s"] = B * n / (row["fused_ms"] / 1e3)
    row["ref_tokens_per_s"] = B * n / (row["ref_ms"] / 1e3)
    row["notes"] = f"tokens/s fused {row['fused_tokens_per_s']:.0f}, reference {row['ref_tokens_per_s']:.0f}"
    rows = [row]
    official = _official_generate(model, os.environ.get("IMTOK_LLAMAGEN_REPO"))
    if official is not None:
        off = compare("generators", "AR decode (fused) vs official LlamaGen generate", shape, device, fused,
                      lambda: official(cond, n, **kw), warmup=1, reps=reps, measure_memory=False)
        off["official_tokens_per_s"] = B * n / (off["ref_ms"] / 1e3)
        off["notes"] = f"tokens/s fused {B * n / (off['fused_ms'] / 1e3):.0f}, official {off['official_tokens_per_s']:.0f}"
        rows.append(off)
    return rows


def _clustered_codebook(g, clusters=64, members=4, dim=8):
    """[clusters * members, dim] l2-normalised codes in groups of `members` close codes (squared distance ~0.1
    inside a group, ~2 between groups): the structure of a VQ codebook that GSD's cluster test relies on."""
    centers = torch.randn(clusters, 1, dim, generator=g)
    codes = centers + 0.1 * torch.randn(clusters, members, dim, generator=g)
    return torch.nn.functional.normalize(codes.reshape(-1, dim), dim=-1)


def _synthetic_tokens(num, classes, grid, g, clusters=64, members=4):
    """Class-conditional 8 x 8 token grids: each class fixes a code group per row (a group differs with
    probability 0.1), and the code inside the group is uniform: like VQ tokens, where near-identical codes are
    interchangeable and only the group is determined by the context."""
    base = torch.randint(0, clusters, (classes, grid, 1), generator=g).expand(-1, -1, grid)
    cls = torch.randint(0, classes, (num,), generator=g)
    group = base[cls].clone()
    noise = torch.rand(num, grid, grid, generator=g) < 0.1
    group[noise] = torch.randint(0, clusters, (int(noise.sum()),), generator=g)
    member = torch.randint(0, members, (num, grid, grid), generator=g)
    return (group * members + member).flatten(1), cls


def _small_trained_gpt(device, quick):
    torch.manual_seed(0)
    model = G.create("llamagen-gpt-tiny", dim=128, n_layer=4, n_head=4, vocab_size=256, block_size=64,
                     num_classes=10).to(device)
    if quick:
        with torch.no_grad():
            model.output.weight.normal_(0.0, 0.3)
        return model.eval(), "random weights"
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    steps = 300
    for _ in range(steps):
        tok, cls = _synthetic_tokens(64, 10, 8, g)
        loss, _ = model.training_loss(tok.to(device), cls.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), f"trained {steps} steps on synthetic grouped-code grids (loss {float(loss.detach()):.2f})"


def _gsd_rows(device, quick):
    model, how = _small_trained_gpt(device, quick)
    B = 1  # per image, as the anchor reports it (a batch advances by its smallest accepted count)
    cond = torch.arange(B, device=device)
    kw = dict(cfg_scale=2.0, temperature=1.0, top_k=0)
    codes = _clustered_codebook(torch.Generator().manual_seed(0))  # the synthetic data's own code groups
    rows = []
    for mode, window in (("sjd", 0), ("gsd", 7)):
        passes = []

        def spec():
            out, p = model.generate(cond, speculative="gsd", gsd_window=window, draft_len=16,
                                    code_embedding=codes.to(device),
                                    generator=torch.Generator(device).manual_seed(len(passes)), **kw)
            passes.append(p)
            return out

        def plain():
            return model.generate(cond, generator=torch.Generator(device).manual_seed(0), **kw)

        row = compare("generators", f"{mode.upper()} (draft 16, window {window}) vs plain AR decoding",
                      f"GPT 4x128, 64 tokens, B={B}, cfg 2, {how}", device, spec, plain, warmup=1,
                      reps=2 if quick else 5, measure_memory=False)
        mean_passes = sum(passes) / len(passes)
        row["forward_passes"] = mean_passes
        row["plain_forward_passes"] = 64
        row["notes"] = f"{mean_passes:.1f} forward passes per image vs 64 ({64 / mean_passes:.2f}x fewer)"
        rows.append(row)
    return rows


def run(device="cpu", quick=False):
    return _ar_rows(device, quick) + _gsd_rows(device, quick)


if __name__ == "__main__":
    main(run)
