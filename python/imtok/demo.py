"""`imtok demo`: the whole job in one command on a laptop CPU.

Trains a tiny 1D tokenizer (One-D-Piece's architecture; tail token drop over the last 40% of the steps: see
DEMO_TOKENIZER) on random crops of the photographs that ship with scikit-image (windows of half to all of a
photo's shorter side, resized to 32 x 32), evaluates it on crops of held-out photographs next to codec-free
reference points (mean colour, 4x4 average) of the same crops, trains a tiny MaskGIT generator on its tokens, samples, and writes a report folder:

    report.md             metrics, timings, what was run
    reconstructions.png   held-out crops (odd rows) and their reconstructions (even rows)
    rate_distortion.png   held-out PSNR vs number of tokens decoded
    samples.png           generated images (when the generator trained)
    metrics.json          everything in report.md as numbers
    tokenizer/ generator/ checkpoints, metrics.jsonl and the EMA weights (model/) of both runs
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time

import torch

DEFAULT_TOKENIZER = "one-d-piece-tiny"
DEFAULT_GENERATOR = "maskgit-tiny"
# Full-resolution 32 x 32 windows of these photographs are nearly flat (each crop's mean colour alone scores
# 26.7 dB on the held-out crops, its 4x4 average 32.0 dB); windows of half to all of the shorter side, resized
# to 32 x 32, show a cat's face or a rocket on its tower (mean colour 19.9 dB, 4x4 average 23.2 dB).
DEFAULT_CROP_SCALE = "0.5,1.0"
GRID_ZOOM = 2  # the PNGs show each 32 x 32 crop at 64 x 64


def add_arguments(p):
    p.add_argument("--out", default="imtok_demo", help="report folder")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="tokenizer registry name")
    p.add_argument("--generator", default=DEFAULT_GENERATOR, help="generator registry name ('none' to skip)")
    p.add_argument("--steps", type=int, default=None, help="tokenizer training steps (default: the demo budget)")
    p.add_argument("--gen-steps", type=int, default=None, help="generator training steps")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--crop-scale", default=DEFAULT_CROP_SCALE,
                   help="LO,HI: crop windows cover a fraction U[LO, HI] of a photo's shorter side, resized to "
                        "--crop; 'full' = full-resolution crop x crop windows (default %(default)s)")
    p.add_argument("--heldout", type=int, default=256, help="held-out crops to evaluate on")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--gen-pool", type=int, default=4096, help="training crops encoded for the generator")
    p.add_argument("--data", default=None, help="image folder instead of the built-in photographs")
    p.add_argument("--bench", action="store_true", help="also run `imtok bench --quick --only vq` into the report")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true")


# The demo's models: the registry's tiny configs made smaller, so both train in minutes on 2 cores.
# Measured on 256 held-out 32 x 32 crops of half to all of a photo's side (mean colour 19.89 dB, 4x4 average 23.21 dB;
# seed 0, one thread, width 128, 2+2 layers): patch 4, lr 3e-3, entropy loss 0.1, 600 steps 17.77 dB (with a
# 200-step quantizer warm-up + k-means codebook 17.82); patch 8 (half the time per step), no entropy loss,
# 1000 steps: lr 3e-3 16.66 (with the warm-up 16.95), lr 1.5e-3 19.59, lr 1e-3 18.64, and lr 1e-3 with tail
# drop from step 600 18.83 with 17.2 / 18.4 / 18.5 dB from 1 / 2 / 8 tokens (10.3 / 12.9 / 17.6 without it).
# So: patch 8, lr 1.5e-3, no warm-up, and tail drop (per crop, L ~ U{1..32}) over the last 40% of the steps, so
# the rate-distortion plot is of a model trained for prefixes. At 2000 steps that gave 20.44 dB with the held-out
# rocket decoded grey (10 of the 18 training photographs are grey, none has its blue); training crops with their
# channels in a random order (shuffle_channels) gave 21.54 dB in the right colours. On the quiet VM (2 threads) the
# steps are ~3.5x faster than on the busy single thread these were measured on: 3000 steps 22.23 dB in 2.6 min for the
# whole demo, 6000 steps (tail drop from 3600) + 1200 generator steps 22.94 dB, SSIM 0.588 in 5.1 min: the budget.
# Codebook restart (every 20 steps, unused codes onto encoder outputs) keeps the codebook in use.
DEMO_TOKENIZER = dict(patch_size=8, enc_width=128, dec_width=128, enc_depth=2, dec_depth=2, enc_heads=4,
                      dec_heads=4, num_latent_tokens=32, entropy_loss_ratio=0.0, tail_drop=None)
DEMO_GENERATOR = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
TOKENIZER_BUDGET = dict(steps=6000, batch_size=16, lr=1.5e-3, warmup=100, min_lr_ratio=0.05, ema_decay=0.99,
                        weight_decay=1e-4, rec_loss="l1", codebook_restart=20, tail_drop="on", tail_drop_start=3600,
                        shuffle_channels=True)
GENERATOR_BUDGET = dict(steps=1200, batch_size=32, lr=2e-3, warmup=50, min_lr_ratio=0.1, ema_decay=0.99)


def _grid_rows(orig, recon, per_row=8, rows=2):
    out = []
    for r in range(rows):
        sl = slice(r * per_row, (r + 1) * per_row)
        if orig[sl].shape[0] < per_row:
            break
        out += [orig[sl], recon[sl]]
    return out


def _speed(model, images, repeats=3):
    """Encode + decode wall time per batch on the fused ops and on the reference ops (same weights)."""
    import imtok

    def once():
        t0 = time.perf_counter()
        with torch.no_grad():
            _, info = model.encode(images)
            model.decode_tokens(info["min_encoding_indices"])
        return time.perf_counter() - t0

    once()
    fused = min(once() for _ in range(repeats))
    with imtok.use_reference():
        once()
        ref = min(once() for _ in range(repeats))
    return {"batch": int(images.shape[0]), "fused_s": fused, "reference_s": ref}


def parse_crop_scale(text: str | None) -> tuple[float, float] | None:
    if text in (None, "", "full", "0"):
        return None
    lo, _, hi = str(text).partition(",")
    from imtok.train.data import check_scale

    return check_scale((float(lo), float(hi or lo)))


def run(args):
    from imtok import tokenizers
    from imtok.eval import evaluate_tokenizer, plot_rate_distortion
    from imtok.train import TokenizerTrainer, TrainConfig, heldout_crops, save_grid, split_images

    t_start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(args.seed)
    print(f"imtok demo -> {os.path.abspath(out)} (torch {torch.__version__}, {torch.get_num_threads()} threads)",
          flush=True)
    scale = parse_crop_scale(args.crop_scale)
    data = split_images(args.data, args.crop)
    print(f"data: {'built-in photographs (scikit-image)' if args.data is None else args.data}: "
          f"train {data[0].summary()}, held-out {data[1].summary()}", flush=True)

    # 1. tokenizer
    budget = dict(TOKENIZER_BUDGET)
    if args.steps is not None:
        budget.update(steps=args.steps, warmup=min(budget["warmup"], max(1, args.steps // 10)),
                      tail_drop_start=args.steps * TOKENIZER_BUDGET["tail_drop_start"] // TOKENIZER_BUDGET["steps"])
    if args.batch_size is not None:
        budget["batch_size"] = args.batch_size
    scale_fields = dict(crop_scale_min=scale[0], crop_scale_max=scale[1]) if scale else {}
    tcfg = TrainConfig(out=os.path.join(out, "tokenizer"), crop=args.crop, heldout=16, seed=args.seed, **scale_fields,
                       eval_every=budget["steps"], save_every=budget["steps"], log_every=10,
                       progress=not args.no_progress, data=args.data, **budget)
    overrides = DEMO_TOKENIZER if args.tokenizer == DEFAULT_TOKENIZER else {}
    tok = tokenizers.create(args.tokenizer, image_size=args.crop, **overrides)
    n_params = sum(p.numel() for p in tok.parameters())
    print(f"1/4 training {args.tokenizer} ({n_params / 1e6:.2f} M parameters) for {tcfg.steps} steps", flush=True)
    t0 = time.time()
    trainer = TokenizerTrainer(tok, tcfg, data=data).fit()
    trainer.export(os.path.join(tcfg.out, "model"))
    tok_time = time.time() - t0
    model = trainer.ema.eval()

    # 2. evaluation on held-out crops
    print(f"2/4 evaluating on {args.heldout} held-out crops", flush=True)
    images = heldout_crops(data[1], args.crop, args.heldout, scale=scale)
    res, recon = evaluate_tokenizer(model, images, log=lambda m: None)
    save_grid(os.path.join(out, "reconstructions.png"), _grid_rows(images, recon), zoom=GRID_ZOOM)
    if "rate_distortion" in res:
        plot_rate_distortion(res["rate_distortion"], os.path.join(out, "rate_distortion.png"),
                             title=f"{args.tokenizer}: held-out PSNR vs tokens",
                             references={f"{k} (no tokens)": v["psnr"] for k, v in res["baselines"].items()})
    speed = _speed(model, images[:64])
    base = res["baselines"]
    print(f"   held-out PSNR {res['psnr']:.2f} dB" + (f", SSIM {res['ssim']:.3f}" if "ssim" in res else "") +
          "; same crops without tokens: " + ", ".join(f"{k} {v['psnr']:.2f} dB" for k, v in base.items()),
          flush=True)

    # 3. generator on the tokenizer's tokens
    gen_ok = args.generator not in (None, "", "none")
    gen_note = "" if gen_ok else "skipped (--generator none)"
    gen_res = None
    if gen_ok:
        from imtok.train.generator import train_demo_generator

        gbudget = dict(GENERATOR_BUDGET)
        if args.gen_steps is not None:
            gbudget.update(steps=args.gen_steps, warmup=min(gbudget["warmup"], max(1, args.gen_steps // 10)))
        gcfg = TrainConfig(out=os.path.join(out, "generator"), crop=args.crop, seed=args.seed, heldout=0, **scale_fields,
                           eval_every=0, save_every=gbudget["steps"], log_every=10,
                           progress=not args.no_progress, data=args.data, **gbudget)
        print(f"3/4 training {args.generator} on the tokens for {gcfg.steps} steps", flush=True)
        t0 = time.time()
        gen_res = train_demo_generator(args.generator, model, gcfg, data, args.samples,
                                       os.path.join(out, "samples.png"), pool=args.gen_pool,
                                       overrides=DEMO_GENERATOR if args.generator == DEFAULT_GENERATOR else {},
                                       zoom=GRID_ZOOM)
        gen_res["train_s"] = time.time() - t0
    else:
        print(f"3/4 generator {gen_note}", flush=True)

    # 4. report
    bench_md = None
    if args.bench:
        print("4/4 quick benchmark (vq)", flush=True)
        from imtok.cli import main as cli_main

        cli_main(["bench", "--quick", "--only", "vq", "--out", os.path.join(out, "bench")])
        with open(os.path.join(out, "bench", "bench.md")) as fh:
            bench_md = fh.read()
    total = time.time() - t_start
    summary = {"tokenizer": args.tokenizer, "tokenizer_params": n_params, "tokenizer_config":
               dataclasses.asdict(tcfg), "tokenizer_train_s": tok_time, "eval": res, "speed": speed,
               "generator": gen_res or {"skipped": gen_note}, "total_s": total,
               "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                           "torch": torch.__version__}}
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump(summary, fh, indent=1, default=str)
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write(_report(args, tcfg, data, n_params, tok_time, res, speed, gen_res, gen_note, bench_md, total))
    print(f"\nheld-out PSNR {res['psnr']:.2f} dB in {total / 60:.1f} min; report: "
          f"{os.path.abspath(os.path.join(out, 'report.md'))}", flush=True)
    return summary


def _crops_text(args, tcfg, data) -> str:
    source = "the photographs of scikit-image" if args.data is None else f"the images of `{args.data}`"
    held = ", ".join(os.path.basename(p) for p in data[1].paths[:4]) + (", ..." if len(data[1]) > 4 else "")
    c = tcfg.crop
    if tcfg.crop_scale is None:
        how = f"each a full-resolution {c}x{c} window at a random position"
    else:
        lo, hi = tcfg.crop_scale
        how = (f"each a square window at a random position whose side is a random fraction "
               f"({lo:g} to {hi:g}) of the photo's shorter side, resized to {c}x{c} (bilinear, antialiased)")
    augment = "flipped at random" + (" and their R, G, B channels put in a random order (colour augmentation)"
                                     if tcfg.shuffle_channels else "")
    return (f"Crops of {source}, {how}; training crops are also {augment}. Training uses "
            f"{len(data[0])} photographs; the {args.heldout} evaluation crops are fixed crops (no flip) of "
            f"{len(data[1])} held-out photographs ({held}) that training never sees.")


def _headline(res) -> list[str]:
    """The tokenizer's PSNR / SSIM next to the codec-free reference points on the same held-out crops."""
    n = res["tokens_per_image"]
    bits = f", {n * math.log2(res['codebook_size']):.0f} bits" if "codebook_size" in res else ""
    ssim = lambda d: f"{d['ssim']:.3f}" if "ssim" in d else "-"
    lines = ["| reconstruction of the held-out crops | numbers per crop | PSNR (dB) | SSIM |", "|---|---|---|---|",
             f"| **tokenizer** | {n} tokens{bits} | **{res['psnr']:.2f}** | **{ssim(res)}** |"]
    for name, v in res["baselines"].items():
        lines.append(f"| {name} (no tokens) | {v['numbers']} floats | {v['psnr']:.2f} | {ssim(v)} |")
    return lines


def _report(args, tcfg, data, n_params, tok_time, res, speed, gen_res, gen_note, bench_md, total):
    from imtok.eval import format_metrics

    overrides = ", ".join(f"{k}={v}" for k, v in DEMO_TOKENIZER.items()) if args.tokenizer == DEFAULT_TOKENIZER \
        else "registry config"
    phases = ""
    if tcfg.quantizer_warmup:
        phases += f" The first {tcfg.quantizer_warmup} steps bypass the quantizer, then k-means starts the codebook."
    if tcfg.tail_drop == "on":
        phases += (f" From step {tcfg.tail_drop_start} on, each crop is decoded from its first L tokens, "
                   f"L ~ U{{1..N}} per crop (tail drop), so that prefixes of the tokens reconstruct it.")
    lines = ["# imtok demo\n",
             f"Tokenizer `{args.tokenizer}` ({overrides}; {n_params / 1e6:.2f} M parameters) trained for "
             f"{tcfg.steps} steps ({tcfg.rec_loss.upper()} loss, codebook restart every {tcfg.codebook_restart} "
             f"steps, batch {tcfg.batch_size}) in {tok_time / 60:.1f} min.{phases} "
             f"Total {total / 60:.1f} min on {torch.get_num_threads()} CPU thread"
             f"{'s' if torch.get_num_threads() > 1 else ''}.\n",
             "## Data\n", _crops_text(args, tcfg, data) + "\n",
             "## Held-out reconstruction\n", *_headline(res), "",
             "The reference points code each crop by its mean colour, or by its 4x4 average pooling upsampled "
             "bilinearly, with unquantized floats.\n",
             "![held-out crops and reconstructions](reconstructions.png)\n",
             f"Rows alternate: held-out crops, then their reconstructions (each pixel drawn {GRID_ZOOM}x{GRID_ZOOM}).\n",
             "All metrics:\n", format_metrics(res) + "\n"]
    if "rate_distortion" in res:
        lines += ["## Rate-distortion\n", "| tokens | PSNR (dB) |\n|---|---|"]
        lines += [f"| {L} | {p:.2f} |" for L, p in res["rate_distortion"]]
        lines += ["", "![rate-distortion](rate_distortion.png)\n"]
    lines += ["## Speed (encode + decode, same weights)\n",
              f"| ops | batch {speed['batch']} |\n|---|---|\n| fused (imtok_cuda) | {1e3 * speed['fused_s']:.1f} ms |"
              f"\n| reference (PyTorch, `imtok.use_reference()`) | {1e3 * speed['reference_s']:.1f} ms |\n"]
    lines.append("## Generator\n")
    if gen_res:
        lines += [f"`{gen_res['name']}` ({gen_res['params'] / 1e6:.2f} M parameters) trained for "
                  f"{gen_res['steps']} steps on the tokenizer's tokens in {gen_res['train_s'] / 60:.1f} min "
                  f"(final loss {gen_res['final_loss']:.3f}); {gen_res['num_samples']} samples, "
                  f"{gen_res['sampling']}:\n", "![samples](samples.png)\n"]
    else:
        lines.append(f"Generator {gen_note}.\n")
    if bench_md:
        lines += ["## Quick benchmark (vq)\n", bench_md]
    else:
        lines.append("Run `imtok demo --bench` to add the quick benchmark table of the fused vector-quantizer ops.\n")
    return "\n".join(lines) + "\n"
