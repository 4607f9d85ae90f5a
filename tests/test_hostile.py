"""Hostile input: every op and public function fed bad arguments (tests/hostile_cases.py) must raise the expected
exception with a message naming the problem, or return the right value; never crash the process, never return
garbage.

Each case runs in a child process (tests/hostile_child.py), so a crash (SIGSEGV, SIGFPE, abort) fails that case,
not the run. Cases are batched: one child per family (all variants), run two at a time; a child that dies is
restarted after the case it died in (reported as the crash), so one crash costs one case. Runtime: about 20 s of
CPU time for the whole table (each child pays ~2 s of `import torch`).
"""
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import imtok_cuda

from hostile_cases import CASES
from test_op_catalogue import op_names

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "hostile_child.py")
EMU = imtok_cuda.emulation_available()

ITEMS = [(f"{cid}[{v}]", cid, code, expect, v) for cid, code, expect, variants in CASES for v in variants]
assert len({i[0] for i in ITEMS}) == len(ITEMS), "duplicate hostile case ids"


def _run_batch(batch):
    """Run [(item_id, code, variant)] in as few children as crashes allow -> {item_id: report}."""
    out = {}
    todo = list(batch)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    while todo:
        payload = json.dumps([{"id": i, "code": c, "variant": v} for i, c, v in todo])
        p = subprocess.run([sys.executable, CHILD], input=payload, capture_output=True, text=True, env=env,
                           timeout=600, cwd=HERE)
        started = None
        for line in p.stdout.splitlines():
            try:
                rep = json.loads(line)
            except ValueError:
                continue
            if "start" in rep:
                started = rep["start"]
            else:
                out[rep["id"]] = rep
                started = None
        if p.returncode == 0:
            missing = [i for i, _, _ in todo if i not in out]
            for i in missing:
                out[i] = {"outcome": "lost", "message": p.stderr[-2000:]}
            break
        sig = -p.returncode if p.returncode < 0 else None
        desc = (signal.Signals(sig).name if sig else f"exit status {p.returncode}")
        if started is None:  # died outside a case (import error ...): every remaining case fails with it
            for i, _, _ in todo:
                out.setdefault(i, {"outcome": "crashed", "message": f"child died ({desc}) outside a case: "
                                                                   f"{p.stderr[-2000:]}"})
            break
        out[started] = {"outcome": "crashed", "message": f"the process died ({desc}): {p.stderr[-1500:]}"}
        todo = [t for t in todo if t[0] not in out]
    return out


@pytest.fixture(scope="module")
def outcomes():
    groups = {}
    for item_id, cid, code, expect, v in ITEMS:
        if v == "emu" and not EMU:
            continue
        groups.setdefault(cid.split("/")[0], []).append((item_id, code, v))  # one child per family
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_run_batch, groups.values()))
    merged = {}
    for r in results:
        merged.update(r)
    return merged


@pytest.mark.parametrize("item", [pytest.param(i, id=i[0], marks=[pytest.mark.emulated] if i[4] == "emu" else [])
                                  for i in ITEMS])
def test_hostile(item, outcomes):
    item_id, cid, code, expect, variant = item
    rep = outcomes[item_id]
    where = f"\n--- case {item_id}:\n{code}\n--- got: {json.dumps(rep, indent=1)[:3000]}"
    assert rep["outcome"] not in ("crashed", "lost"), "the process died or lost the case" + where
    if expect[0] == "raises":
        _, exc, msg = expect
        assert rep["outcome"] == "raised", f"expected {exc} containing {msg!r}, but nothing was raised" + where
        assert exc in rep["mro"], f"expected {exc}, got {rep['type']}" + where
        assert msg in rep["message"], f"expected {msg!r} in the message" + where
    else:
        assert rep["outcome"] == "ok", "expected success" + where
        assert rep["value"], "the value check failed (garbage result)" + where


def test_table_covers_every_op():
    """Every op of the catalogue (backward ops aside) appears in at least one raw-op case (OPS.<op>). Kernels,
    fake kernels and autograd of every op are checked in test_op_catalogue.py."""
    used = " ".join(code for _, code, _, _ in CASES)
    missing = sorted(n for n in op_names() if not n.endswith("_backward") and f"OPS.{n}(" not in used)
    assert not missing, f"ops without a hostile case: {missing}"
