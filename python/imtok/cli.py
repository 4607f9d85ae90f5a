"""The `imtok` command line: demo, train, eval, generate, info, bench."""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import sys
import traceback


BENCH_PACKAGE = "imtok_benchmarks"


def benchmarks_package():
    """The benchmark files as the package `imtok_benchmarks`: the benchmarks/ folder of the checkout that the
    running imtok comes from (editable install, or PYTHONPATH on a checkout), else the copy that a regular
    `pip install .` puts in site-packages (setup.py ships benchmarks/ under that name)."""
    import imtok

    folder = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(imtok.__file__)), "..", "..", "benchmarks"))
    if not os.path.isfile(os.path.join(folder, "_common.py")):
        return importlib.import_module(BENCH_PACKAGE)
    loaded = sys.modules.get(BENCH_PACKAGE)
    if loaded is not None and list(loaded.__path__) == [folder]:
        return loaded
    for name in [n for n in sys.modules if n == BENCH_PACKAGE or n.startswith(BENCH_PACKAGE + ".")]:
        del sys.modules[name]  # another checkout's copy: its submodules must not be reused
    spec = importlib.util.spec_from_file_location(BENCH_PACKAGE, os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    package = importlib.util.module_from_spec(spec)
    sys.modules[BENCH_PACKAGE] = package
    spec.loader.exec_module(package)
    return package


def bench_modules(only=None):
    """Module names of the benchmark files (bench_<family>.py), all or those whose family contains one of the
    comma-separated names in `only`; a name that matches no file is an error (it would run nothing)."""
    folder = benchmarks_package().__path__[0]
    families = sorted(f[len("bench_"):-len(".py")] for f in os.listdir(folder)
                      if f.startswith("bench_") and f.endswith(".py"))
    if only:
        wanted = [o.strip() for o in only.split(",") if o.strip()]
        unknown = [o for o in wanted if not any(o in fam for fam in families)]
        if unknown:
            raise SystemExit(f"--only {','.join(unknown)}: no benchmark file matches (families: {', '.join(families)})")
        families = [fam for fam in families if any(o in fam for o in wanted)]
    return ["bench_" + fam for fam in families]


def bench(args):
    import torch

    package = benchmarks_package()
    common = importlib.import_module(package.__name__ + "._common")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    modules = bench_modules(args.only)
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    with open(os.path.join(args.out, "machine.json"), "w") as fh:
        json.dump({"date": stamp, **common.machine()}, fh, indent=1)
    all_rows, failed = [], []
    for name in modules:
        load = common.load_1m()
        busy = f"; WARNING: machine loaded (1-minute load average {load:.1f} on {os.cpu_count()} CPUs)" \
            if common.is_loaded(load) else ""
        print(f"== {name}.py ({device}, {'quick' if args.quick else 'full'}{busy})", flush=True)
        try:
            rows = importlib.import_module(f"{package.__name__}.{name}").run(device=device, quick=args.quick)
        except Exception:  # one broken family must not cost the others' figures (a GPU lease is short)
            traceback.print_exc()
            failed.append(name)
            continue
        print(common.markdown(rows), flush=True)
        all_rows.extend(rows)
        # after every file: a run stopped by a timeout keeps its rows
        common.save(all_rows, os.path.join(args.out, "bench"))
    print(f"\nwrote {args.out}/bench.json and bench.md ({len(all_rows)} rows, {stamp}, {common.machine()})")
    warning = common.load_warning(all_rows)
    if warning:
        print(warning)
    if failed:
        sys.exit(f"benchmark files that failed: {', '.join(failed)}")


def _add_config_args(p, skip=()):
    """One --option per TrainConfig field (bools as --x / --no-x); defaults stay None = the config's own."""
    from imtok.train import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=kind, default=None, metavar=f.name.upper(),
                           help=f"default {f.default!r}")


def _config(args, **defaults):
    from imtok.train import TrainConfig

    values = dict(defaults)
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return TrainConfig.from_dict(values)


def load_tokenizer(spec: str, overrides: dict | None = None):
    """A saved tokenizer folder (save_pretrained) or a registry name (fresh weights, config overrides)."""
    from imtok import tokenizers

    if os.path.isdir(spec):
        return tokenizers.from_pretrained(spec)
    return tokenizers.create(spec, **(overrides or {}))


def _model_args(items) -> dict:
    """--model-arg KEY=VALUE (VALUE parsed as JSON when it is JSON: 0.1, 64, true, null, [1, 2])."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--model-arg expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def train(args):
    from imtok.train import TokenizerTrainer, init_distributed

    init_distributed()
    if args.tokenizer:  # a generator on the tokens of a trained tokenizer
        from imtok import generators
        from imtok.train import split_images
        from imtok.train.generator import GeneratorTrainer, class_labels, generator_overrides

        cfg = _config(args, out=args.out or "runs/generator", heldout=0)
        tok = load_tokenizer(args.tokenizer)
        data = split_images(cfg.data, cfg.crop)
        labels = class_labels(data[0])
        gen = generators.from_pretrained(args.model) if os.path.isdir(args.model) else generators.create(
            args.model, **{**generator_overrides(args.model, tok, labels[1], cfg.crop), **_model_args(args.model_arg)})
        tr = GeneratorTrainer(gen, tok, cfg, data, labels=labels, pool=args.pool)
    else:
        cfg = _config(args, out=args.out or "runs/tokenizer")
        tr = TokenizerTrainer(load_tokenizer(args.model, _model_args(args.model_arg)), cfg)
    tr.fit(resume=args.resume if args.resume is not None else False)
    tr.export(os.path.join(cfg.out, "model"))
    tr.log(f"done: {cfg.out}/model (EMA weights), metrics in {cfg.out}/metrics.jsonl")


def evaluate(args):
    import torch

    from imtok.eval import evaluate_tokenizer, format_metrics, plot_rate_distortion
    from imtok.train import heldout_crops, save_grid, split_images

    model = load_tokenizer(args.tokenizer)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    _, held = split_images(args.data, args.crop)
    from imtok.demo import parse_crop_scale

    images = heldout_crops(held, args.crop, args.num, scale=parse_crop_scale(args.crop_scale))
    alphas = [float(a) for a in args.perturb_alpha.split(",")] if args.perturb_alpha else []
    res, recon = evaluate_tokenizer(model, images, batch=args.batch_size, perturb_alphas=alphas,
                                    perturb_delta=args.perturb_delta, fid_spec=args.fid)
    os.makedirs(args.out, exist_ok=True)
    n = min(8, len(images))
    save_grid(os.path.join(args.out, "reconstructions.png"), [images[:n], recon[:n]])
    if "rate_distortion" in res:
        plot_rate_distortion(res["rate_distortion"], os.path.join(args.out, "rate_distortion.png"))
    with open(os.path.join(args.out, "metrics.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    print(format_metrics(res))
    print(f"\nwrote {args.out}/metrics.json, reconstructions.png"
          + (", rate_distortion.png" if "rate_distortion" in res else ""))


def generate(args):
    import torch

    from imtok import generators
    from imtok.train import save_grid
    from imtok.train.generator import grid_rows, sample_images

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(args.tokenizer).to(device).eval()
    gen = generators.from_pretrained(args.generator).to(device)
    n_classes = getattr(gen, "num_classes", 1)
    cond = (torch.tensor([int(c) for c in args.classes.split(",")]) if args.classes else
            torch.arange(args.num) % n_classes).to(device)
    images, opts = sample_images(gen, tok, cond, seed=args.seed)
    save_grid(args.out, grid_rows(images))
    print(f"wrote {args.out} ({len(images)} samples; {opts})")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="imtok", description="imtok: image tokenizers and generators on imtok_cuda")
    sub = ap.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="train a tiny 1D tokenizer + generator on built-in photos, write a report")
    from imtok.demo import add_arguments as demo_arguments

    demo_arguments(d)

    t = sub.add_parser("train", help="train a tokenizer (or, with --tokenizer, a generator on its tokens)")
    t.add_argument("--model", required=True, help="registry name (e.g. one-d-piece-tiny) or a saved folder")
    t.add_argument("--tokenizer", default=None, help="trained tokenizer folder: train the generator --model on it")
    t.add_argument("--resume", nargs="?", const=True, default=None,
                   help="resume from the latest checkpoint in --out, or from the given checkpoint file")
    t.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, repeatable (e.g. --model-arg entropy_loss_ratio=0.1)")
    t.add_argument("--pool", type=int, default=4096, help="generators: training crops encoded once (default 4096)")
    _add_config_args(t)

    e = sub.add_parser("eval", help="PSNR, SSIM, codebook use, robustness, rate-distortion (and FID if weights)")
    e.add_argument("--tokenizer", required=True, help="saved tokenizer folder (or a registry name)")
    e.add_argument("--data", default=None, help="image folder (default: the built-in photographs)")
    e.add_argument("--crop", type=int, default=32)
    e.add_argument("--crop-scale", default=None, help="LO,HI: windows of that fraction of a photo's shorter side "
                   "resized to --crop (as `imtok train --crop-scale-min/-max` and the demo); default: full resolution")
    e.add_argument("--num", type=int, default=256, help="held-out crops")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--perturb-alpha", default="0.1,0.3,0.5", help="RobusTok alphas ('' = skip robustness)")
    e.add_argument("--perturb-delta", type=int, default=100)
    e.add_argument("--fid", default=None, help="'inception' (pytorch-fid weights on disk) or a TorchScript path")
    e.add_argument("--device", default=None)
    e.add_argument("--out", default="eval_out")

    g = sub.add_parser("generate", help="sample images from a trained generator and tokenizer")
    g.add_argument("--generator", required=True, help="trained generator folder")
    g.add_argument("--tokenizer", required=True, help="trained tokenizer folder")
    g.add_argument("--num", type=int, default=16)
    g.add_argument("--classes", default=None, help="comma-separated class ids (default: 0, 1, ... cycling)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None)
    g.add_argument("--out", default="samples.png")

    sub.add_parser("info", help="torch/CUDA at build and run time, archs, kernels per op")
    b = sub.add_parser("bench", help="fused ops vs references, side by side (JSON + markdown)")
    b.add_argument("--quick", action="store_true", help="smaller shapes, about a minute per family on 2 cores")
    b.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    b.add_argument("--only", default=None,
                   help="comma-separated family names, each matching the bench_<family>.py files whose family "
                        "contains it (vq: bench_vq and bench_vq_quantizers; shuffle: bench_shuffle)")
    b.add_argument("--out", default="bench_out", help="output folder")
    args = ap.parse_args(argv)
    if args.cmd == "info":
        from imtok_cuda.info import main as info_main

        info_main()
    elif args.cmd == "bench":
        bench(args)
    elif args.cmd == "demo":
        from imtok.demo import run

        run(args)
    else:
        {"train": train, "eval": evaluate, "generate": generate}[args.cmd](args)


if __name__ == "__main__":
    main()
