"""Shared benchmark helpers: interleaved timing with its spread, peak extra memory, result rows, machine load.

Every benchmark compares a fused op with its reference on the same inputs in the same run, timed interleaved
(one call of each in turn, the order alternating between rounds), so that a change of load on a shared host
slows both sides alike; a row holds the median and the spread (min, max, every run) of both sides and their
ratios. Peak extra memory is what the call allocates on top of what already exists (inputs), measured with
the CUDA caching allocator's peak on GPU and with the process's resident-set high-water mark on CPU (Linux),
which also sees memory a kernel allocates outside torch. Each row records the 1-minute load average before
and after it; `markdown` adds a warning line under the table when the machine was loaded.
"""
import ctypes
import gc
import json
import os
import platform
import statistics
import time

import torch


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_runs(variants, device="cpu", warmup=1, reps=5, max_seconds=20.0):
    """Time each variant in turn: `warmup` untimed rounds, then `reps` timed rounds of one call of each, the order
    reversed every other round, so that a change of load on a shared host hits every variant alike. A variant is
    a callable, or an (enter, call, leave) triple whose enter / leave (patching a model, say) run untimed around
    the timed call. Returns per variant {"wall_ms": [...], "cpu_ms": [...]}: wall time and process CPU time (all
    threads of this process; steadier than wall time on a shared host). Stops early after the round in which
    the timed rounds passed max_seconds (None: never)."""
    nothing = lambda: None  # noqa: E731
    variants = [(nothing, v, nothing) if callable(v) else v for v in variants]
    out = [{"wall_ms": [], "cpu_ms": []} for _ in variants]
    start = None
    for rnd in range(warmup + reps):
        order = range(len(variants)) if (rnd - warmup) % 2 == 0 else reversed(range(len(variants)))
        if rnd == warmup:
            start = time.perf_counter()
        for i in order:
            enter, call, leave = variants[i]
            enter()
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            sync(device)
            if rnd >= warmup:
                out[i]["wall_ms"].append((time.perf_counter() - t0) * 1e3)
                out[i]["cpu_ms"].append((time.process_time() - c0) * 1e3)
            leave()
        if rnd >= warmup and max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return out


def interleaved_times_ms(fns, device="cpu", warmup=1, reps=5, max_seconds=20.0):
    """Wall times in ms of each callable in `fns`, timed interleaved (interleaved_runs), one list per callable."""
    return [r["wall_ms"] for r in interleaved_runs(fns, device, warmup, reps, max_seconds)]


def times_ms(fn, device="cpu", warmup=1, reps=5, max_seconds=20.0):
    """Wall times in ms of `reps` calls after `warmup` calls (fewer reps if the calls take over max_seconds)."""
    return interleaved_times_ms([fn], device, warmup, reps, max_seconds)[0]


def median_ms(fn, device="cpu", warmup=1, reps=5, max_seconds=20.0):
    """Median wall time in ms over `reps` calls after `warmup` calls (fewer reps if one call is slow)."""
    return statistics.median(times_ms(fn, device, warmup, reps, max_seconds))


def spread(times):
    """{"median", "min", "max", "q1", "q3"} of a list of times (quartiles by linear interpolation)."""
    times = sorted(times)
    if len(times) > 1:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1 = q3 = times[0]
    return {"median": statistics.median(times), "min": times[0], "max": times[-1], "q1": q1, "q3": q3}


def load_1m():
    """The 1-minute load average (runnable threads, all processes), or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def is_loaded(load):
    """More runnable threads than CPUs: other processes compete with the benchmark (which itself adds up to its
    thread count), so wall times swing; read the spread columns and prefer the paired ratios."""
    return load is not None and load > (os.cpu_count() or 1)


def load_warning(rows):
    """One line when any row was measured on a loaded machine (load average above the CPU count), else None."""
    loads = [v for r in rows for v in (r.get("load_1m") or []) if v is not None]
    if not any(is_loaded(v) for v in loads):
        return None
    return ("WARNING: the machine was loaded during these rows (1-minute load average {:.1f}-{:.1f} on {} CPUs): "
            "wall times may swing several-fold; fused and reference were interleaved, compare their spread."
            .format(min(loads), max(loads), os.cpu_count()))


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


def _release_free_heap():
    """glibc keeps freed memory mapped (and raises its mmap threshold after large frees), so a call that reuses it
    would not raise the resident set at all: hand it back to the OS first (no-op without glibc)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_peak_extra_mb(fn):
    """CPU: release the free heap, reset the kernel's resident-set high-water mark (Linux clear_refs 5), run fn,
    read VmHWM. Counts every allocation that is touched, torch's and the kernels' own (std::vector scratch)."""
    _release_free_heap()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss0 = _status_kb("VmRSS")
    out = fn()
    hwm = _status_kb("VmHWM")
    del out
    return max(hwm - rss0, 0) / 1024


def add_times(row, side, times):
    """row[side + "_ms"] = median, row[side + "_spread_ms"] = [min, max], row[side + "_times_ms"] = every run."""
    s = spread(times)
    row[side + "_ms"] = s["median"]
    row[side + "_spread_ms"] = [s["min"], s["max"]]
    row[side + "_times_ms"] = [round(v, 3) for v in times]


def add_speedup(row, fused_times, ref_times):
    """speedup = ratio of the medians; speedup_spread = [min, max] of the per-round ratios (an interleaved round
    times both sides back to back, so its ratio sees one load)."""
    row["speedup"] = statistics.median(ref_times) / statistics.median(fused_times)
    paired = [r / f for f, r in zip(fused_times, ref_times)]
    row["speedup_spread"] = [min(paired), max(paired)]


def compare(family, op, shape, device, fused, reference, warmup=1, reps=5, notes="", measure_memory=True,
            max_seconds=40.0):
    """One result row: fused vs reference, same inputs, same run, timed interleaved. reference=None means it
    cannot run here (say why in notes). Times: `<side>_ms` is the median, `<side>_spread_ms` [min, max],
    `<side>_times_ms` every run (add_times); `speedup`, `speedup_spread` (add_speedup); `load_1m` [before, after]."""
    row = {"family": family, "op": op, "shape": shape, "device": str(device), "notes": notes}
    before = load_1m()
    sides = {"fused": fused} if reference is None else {"fused": fused, "ref": reference}
    times = dict(zip(sides, interleaved_times_ms(sides.values(), device, warmup, reps, max_seconds)))
    for side, t in times.items():
        add_times(row, side, t)
    row["fused_peak_mb"] = peak_extra_mb(fused, device) if measure_memory else None
    if reference is not None:
        row["ref_peak_mb"] = peak_extra_mb(reference, device) if measure_memory else None
        add_speedup(row, times["fused"], times["ref"])
        if measure_memory and row["fused_peak_mb"] is not None:
            # below 0.1 MiB the resident-set reading is page noise: report the ratio against 0.1 MiB
            row["mem_ratio"] = row["ref_peak_mb"] / max(row["fused_peak_mb"], 0.1)
    row["load_1m"] = [before, load_1m()]
    return row


def main(run):
    """The command line of every bench_<family>.py: --device, --quick, --out PREFIX (writes .json and .md)."""
    import argparse

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
    return {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "gpu": gpu, "torch": torch.__version__, "load_1m": load_1m()}


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _short(v):
    return format(v, ".0f" if v >= 100 else ".1f" if v >= 10 else ".2f")


def _with_spread(value, spread_, spec, unit=""):
    """'12.34 (11.9-14.0)': the median and [min, max] of the runs."""
    if value is None:
        return "-"
    text = format(value, spec) + unit
    if spread_:
        text += " ({}-{})".format(_short(spread_[0]), _short(spread_[1]))
    return text


def markdown(rows):
    """The rows as a markdown table (times: median (min-max) over the runs; speedup: ratio of the medians
    (min-max of the per-round ratios)), plus a warning line when the machine was loaded."""
    lines = ["| family | op | shape | device | fused ms | ref ms | speedup | fused peak MiB | ref peak MiB | mem ratio | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["family"], r["op"], r["shape"], r["device"],
            _with_spread(r.get("fused_ms"), r.get("fused_spread_ms"), ".2f"),
            _with_spread(r.get("ref_ms"), r.get("ref_spread_ms"), ".2f"),
            _with_spread(r.get("speedup"), r.get("speedup_spread"), ".1f", "x"), fmt(r.get("fused_peak_mb"), ".1f"),
            fmt(r.get("ref_peak_mb"), ".1f"), "-" if r.get("mem_ratio") is None else _short(r["mem_ratio"]) + "x",
            r.get("notes", "")))
    warning = load_warning(rows)
    if warning:
        lines += ["", warning]
    return "\n".join(lines)


def save(rows, path_prefix):
    with open(path_prefix + ".json", "w") as f:
        json.dump({"machine": machine(), "load_warning": load_warning(rows), "rows": rows}, f, indent=1)
    with open(path_prefix + ".md", "w") as f:
        f.write(markdown(rows) + "\n")
