"""Shared benchmark helpers: median time and peak extra memory of a callable, and result rows.

Every benchmark compares a fused op with its reference on the same inputs in the same run; a row holds both
figures and their ratios. Peak extra memory is what the call allocates on top of what already exists
(inputs), measured with the CUDA caching allocator's peak on GPU and with the process's resident-set
high-water mark on CPU (Linux), which also sees memory a kernel allocates outside torch.
"""
import gc
import json
import platform
import statistics
import time

import torch


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def times_ms(fn, device="cpu", warmup=1, reps=5, max_seconds=20.0):
    """Wall times in ms of `reps` calls after `warmup` calls (fewer reps if the calls take over max_seconds)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > max_seconds:
            break
    return times


def median_ms(fn, device="cpu", warmup=1, reps=5, max_seconds=20.0):
    """Median wall time in ms over `reps` calls after `warmup` calls (fewer reps if one call is slow)."""
    return statistics.median(times_ms(fn, device, warmup, reps, max_seconds))


def peak_extra_mb(fn, device="cpu"):
    """Peak bytes allocated by fn() beyond what was allocated before it, in MiB."""
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak / 2**20
    return _rss_peak_extra_mb(fn)


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _rss_peak_extra_mb(fn):
    """CPU: reset the kernel's resident-set high-water mark (Linux clear_refs 5), run fn, read VmHWM.
    Counts every allocation that is touched, torch's and the kernels' own (std::vector scratch) alike."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss0 = _status_kb("VmRSS")
    out = fn()
    hwm = _status_kb("VmHWM")
    del out
    return max(hwm - rss0, 0) / 1024


def compare(family, op, shape, device, fused, reference, warmup=1, reps=5, notes="", measure_memory=True):
    """One result row: fused vs reference, same inputs, same run. reference=None means it cannot run here
    (say why in notes)."""
    row = {"family": family, "op": op, "shape": shape, "device": str(device), "notes": notes}
    row["fused_ms"] = median_ms(fused, device, warmup, reps)
    row["fused_peak_mb"] = peak_extra_mb(fused, device) if measure_memory else None
    if reference is not None:
        row["ref_ms"] = median_ms(reference, device, warmup, reps)
        row["ref_peak_mb"] = peak_extra_mb(reference, device) if measure_memory else None
        row["speedup"] = row["ref_ms"] / row["fused_ms"]
        if measure_memory and row["fused_peak_mb"] is not None:
            # below 0.1 MiB the resident-set reading is page noise: report the ratio against 0.1 MiB
            row["mem_ratio"] = row["ref_peak_mb"] / max(row["fused_peak_mb"], 0.1)
    return row


def main(run):
    """The command line of every bench_<family>.py: --device, --quick, --out PREFIX (writes .json and .md)."""
    import argparse
    import os

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    a = ap.parse_args()
    rows = run(a.device, a.quick)
    print(markdown(rows))
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        save(rows, a.out)


def machine():
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__}


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def markdown(rows):
    lines = ["| family | op | shape | device | fused ms | ref ms | speedup | fused peak MiB | ref peak MiB | mem ratio | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["family"], r["op"], r["shape"], r["device"], fmt(r.get("fused_ms"), ".2f"), fmt(r.get("ref_ms"), ".2f"),
            fmt(r.get("speedup"), ".1f") + ("x" if r.get("speedup") else ""), fmt(r.get("fused_peak_mb"), ".1f"),
            fmt(r.get("ref_peak_mb"), ".1f"), fmt(r.get("mem_ratio"), ".0f") + ("x" if r.get("mem_ratio") else ""),
            r.get("notes", "")))
    return "\n".join(lines)


def save(rows, path_prefix):
    with open(path_prefix + ".json", "w") as f:
        json.dump({"machine": machine(), "rows": rows}, f, indent=1)
    with open(path_prefix + ".md", "w") as f:
        f.write(markdown(rows) + "\n")
