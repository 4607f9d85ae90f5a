import os
import subprocess
import sys

import pytest
import torch

import imtok_cuda

HAS_GPU = torch.cuda.is_available()
HAS_EMU = imtok_cuda.emulation_available()


def pytest_collection_modifyitems(config, items):
    """The one gate of the device tests: `cuda` needs a GPU; `emulated` (the marker, or the `emu` fixture) needs a
    build with IMTOK_EMULATE_CUDA=1 (CI sets IMTOK_REQUIRE_EMULATION=1, so there a build without it fails instead)."""
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU")
    skip_emu = pytest.mark.skip(reason="built without IMTOK_EMULATE_CUDA=1")
    for item in items:
        if "cuda" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)
        emulated = item.get_closest_marker("emulated") or "emu" in getattr(item, "fixturenames", ())
        if emulated and not HAS_EMU:
            item.add_marker(skip_emu)


def pytest_configure(config):
    # CI sets IMTOK_REQUIRE_EMULATION=1: a build without the emulated kernels must fail, not skip.
    if os.environ.get("IMTOK_REQUIRE_EMULATION") == "1" and not HAS_EMU:
        raise pytest.UsageError("IMTOK_REQUIRE_EMULATION=1 but imtok_cuda was built without IMTOK_EMULATE_CUDA=1")


@pytest.fixture
def emu():
    """torch.ops.imtok_cuda_emu: the CUDA kernels of imtok_cuda executed on CPU threads (tests using it are
    skipped in builds without them, as `@pytest.mark.emulated` tests are)."""
    return torch.ops.imtok_cuda_emu


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def avx512_and_avx2(tmp_path):
    """run(script) executes a Python script twice in fresh processes, once as is and once with
    IMTOK_DISABLE_AVX512=1 (read once per process: the CPU kernels' 512-bit paths off), and returns the two
    objects the script torch.save()d to sys.argv[1]."""
    def run(script):
        results = []
        for disable in (False, True):
            env = {k: v for k, v in os.environ.items() if k != "IMTOK_DISABLE_AVX512"}
            if disable:
                env["IMTOK_DISABLE_AVX512"] = "1"
            path = tmp_path / f"result_{int(disable)}.pt"
            subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env)
            results.append(torch.load(path))
        return results

    return run
