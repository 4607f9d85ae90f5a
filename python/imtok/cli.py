"""The `imtok` command line: `imtok info`, `imtok bench`."""
import argparse
import datetime
import importlib.util
import json
import os
import sys


def _bench_dir():
    import imtok_benchmarks

    return os.path.dirname(os.path.abspath(imtok_benchmarks.__file__))


def _load(path):
    name = "imtok_bench_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench(args):
    import torch

    sys.path.insert(0, _bench_dir())
    from _common import machine, markdown, save

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    files = sorted(f for f in os.listdir(_bench_dir()) if f.startswith("bench_") and f.endswith(".py"))
    if args.only:
        files = [f for f in files if any(o in f for o in args.only.split(","))]
    os.makedirs(args.out, exist_ok=True)
    all_rows = []
    for f in files:
        print(f"== {f} ({device}, {'quick' if args.quick else 'full'})", flush=True)
        rows = _load(os.path.join(_bench_dir(), f)).run(device=device, quick=args.quick)
        print(markdown(rows), flush=True)
        all_rows.extend(rows)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    save(all_rows, os.path.join(args.out, "bench"))
    with open(os.path.join(args.out, "machine.json"), "w") as fh:
        json.dump({"date": stamp, **machine()}, fh, indent=1)
    print(f"\nwrote {args.out}/bench.json and bench.md ({len(all_rows)} rows, {stamp}, {machine()})")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="imtok", description="imtok_cuda tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="torch/CUDA at build and run time, archs, kernels per op")
    b = sub.add_parser("bench", help="fused ops vs references, side by side (JSON + markdown)")
    b.add_argument("--quick", action="store_true", help="smaller shapes, about a minute per family on 2 cores")
    b.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    b.add_argument("--only", default=None, help="comma-separated family names (vq,splat,...)")
    b.add_argument("--out", default="bench_out", help="output folder")
    args = ap.parse_args(argv)
    if args.cmd == "info":
        from imtok_cuda.info import main as info_main

        info_main()
    else:
        bench(args)


if __name__ == "__main__":
    main()
