"""`imtok bench` tooling: which files --only selects, how they are loaded, what a row records (no timing asserts)."""
import importlib
import json
import os
import sys

import pytest

from imtok import cli

BENCH_DIR = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


@pytest.fixture(scope="module")
def common():
    return importlib.import_module(cli.benchmarks_package().__name__ + "._common")


def test_benchmarks_load_from_this_checkout_without_sys_path_changes():
    path_before = list(sys.path)
    package = cli.benchmarks_package()
    assert package.__name__ == "imtok_benchmarks"
    assert os.path.samefile(package.__path__[0], BENCH_DIR)
    shuffle = importlib.import_module("imtok_benchmarks.bench_shuffle")
    assert callable(shuffle.run)
    assert sys.path == path_before
    assert cli.benchmarks_package() is package  # loaded once


def test_every_benchmark_file_is_a_family_of_the_cli():
    files = sorted(f[:-3] for f in os.listdir(BENCH_DIR) if f.startswith("bench_") and f.endswith(".py"))
    assert cli.bench_modules() == files
    for name in files:  # relative imports only: no file puts its folder on sys.path
        with open(os.path.join(BENCH_DIR, name + ".py")) as f:
            assert "from _common import" not in f.read(), name


def test_only_selects_by_family():
    assert cli.bench_modules("shuffle") == ["bench_shuffle"]
    assert cli.bench_modules("merge") == ["bench_merge"]
    assert cli.bench_modules("vq") == ["bench_vq", "bench_vq_quantizers"]
    assert cli.bench_modules("shuffle, splat") == ["bench_shuffle", "bench_splat"]
    with pytest.raises(SystemExit, match="nosuch"):
        cli.bench_modules("nosuch")


def test_interleaved_runs_alternate_the_order_and_keep_every_time(common):
    calls = []
    fns = [lambda: calls.append("a"), lambda: calls.append("b")]
    times = common.interleaved_times_ms(fns, warmup=1, reps=4, max_seconds=None)
    assert calls == ["b", "a"] + ["a", "b", "b", "a"] * 2  # the warmup round is round -1
    assert [len(t) for t in times] == [4, 4]
    assert all(v >= 0 for t in times for v in t)


def test_interleaved_runs_time_only_the_call_of_a_triple(common):
    events = []
    variant = (lambda: events.append("enter"), lambda: events.append("call"), lambda: events.append("leave"))
    (run,) = common.interleaved_runs([variant], warmup=0, reps=2, max_seconds=None)
    assert events == ["enter", "call", "leave"] * 2
    assert len(run["wall_ms"]) == len(run["cpu_ms"]) == 2


def test_spread_statistics(common):
    s = common.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s == {"median": 3.0, "min": 1.0, "max": 5.0, "q1": 2.0, "q3": 4.0}
    assert common.spread([7.0]) == {"median": 7.0, "min": 7.0, "max": 7.0, "q1": 7.0, "q3": 7.0}


def test_compare_row_has_spread_paired_ratios_and_load(common):
    row = common.compare("t", "op", "shape", "cpu", lambda: sum(range(1000)), lambda: sum(range(3000)), warmup=0,
                         reps=3, measure_memory=False)
    for side in ("fused", "ref"):
        times = row[side + "_times_ms"]
        assert len(times) == 3
        lo, hi = row[side + "_spread_ms"]
        assert lo == pytest.approx(min(times), abs=1e-3) and hi == pytest.approx(max(times), abs=1e-3)
        assert lo <= row[side + "_ms"] <= hi
    lo, hi = row["speedup_spread"]
    assert lo <= hi and lo > 0
    assert len(row["load_1m"]) == 2
    text = common.markdown([row])
    assert f"{row['fused_ms']:.2f} (" in text  # median (min-max)


def test_load_warning_in_markdown_and_saved_json(common, tmp_path):
    cpus = os.cpu_count()
    quiet = {"family": "t", "op": "op", "shape": "s", "device": "cpu", "load_1m": [0.0, 0.1]}
    busy = dict(quiet, load_1m=[cpus + 3.0, cpus + 4.0])
    assert common.load_warning([quiet]) is None
    assert "WARNING" not in common.markdown([quiet])
    assert "loaded" in common.load_warning([quiet, busy])
    assert common.load_warning([quiet, busy]) in common.markdown([quiet, busy])
    common.save([quiet, busy], str(tmp_path / "bench"))
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert "loaded" in saved["load_warning"]
    assert saved["machine"]["cpus"] == cpus and "load_1m" in saved["machine"]


def test_cli_only_shuffle_runs_bench_shuffle(monkeypatch, tmp_path, capsys):
    shuffle = importlib.import_module(cli.benchmarks_package().__name__ + ".bench_shuffle")
    row = {"family": "shuffle", "op": "token_shuffle", "shape": "s", "device": "cpu", "fused_ms": 1.0,
           "load_1m": [0.0, 0.0]}
    monkeypatch.setattr(shuffle, "run", lambda device, quick: [dict(row, notes=f"quick={quick}")])
    cli.main(["bench", "--quick", "--only", "shuffle", "--device", "cpu", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "== bench_shuffle.py" in out and "bench_merge" not in out
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [r["op"] for r in saved["rows"]] == ["token_shuffle"] and saved["rows"][0]["notes"] == "quick=True"
