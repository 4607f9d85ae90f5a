"""Build imtok_cuda._C: C++ CPU kernels always, CUDA kernels when a CUDA toolkit and a CUDA torch are present,
emulated CUDA kernels (device code on CPU threads, test-only) when IMTOK_EMULATE_CUDA=1.

Environment:
  FORCE_CUDA=1 / 0     build / skip the CUDA kernels regardless of what is detected
  TORCH_CUDA_ARCH_LIST archs to compile for; default "8.0;9.0" when no GPU is visible to nvidia-smi
  CUDA_HOME            toolkit root; found from the real nvcc behind a wrapper script otherwise
  IMTOK_EMULATE_CUDA=1 also compile every *_kernels.cuh for CPU and register them under imtok_cuda_emu
  IMTOK_DEBUG=1        -O0 -g
  MAX_JOBS             parallel compile jobs (ninja)

`build_ext` first prints what it compiles (CPU / emulated / CUDA translation units, CUDA archs) and roughly how
long it takes; pip shows it with `pip install -v`.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name):
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    return v.strip().lower() in ("1", "true", "yes", "on")


def find_cuda_home():
    """The toolkit root. nvcc on PATH may be a wrapper script that execs the real one: follow it."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        for cand in sorted(glob.glob("/usr/local/cuda*"), reverse=True):
            if os.path.exists(os.path.join(cand, "bin", "nvcc")):
                return cand
        return None
    real = os.path.realpath(nvcc)
    try:
        with open(real, "rb") as f:
            head = f.read(4096)
        if head.startswith(b"#!"):
            m = re.search(rb"(/\S+/bin/nvcc)", head)
            if m and os.path.exists(m.group(1).decode()):
                real = os.path.realpath(m.group(1).decode())
    except OSError:
        pass
    return os.path.dirname(os.path.dirname(real))


def nvcc_version(cuda_home):
    try:
        out = subprocess.check_output([os.path.join(cuda_home, "bin", "nvcc"), "--version"], text=True)
    except Exception:
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def gpu_visible():
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except Exception:
        return False


force = _env_flag("FORCE_CUDA")
cuda_home = find_cuda_home() if force is not False else None
if force is True and cuda_home is None:
    sys.exit("FORCE_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME to the toolkit root)")
with_cuda = bool(cuda_home) and (force is True or (force is None and torch.version.cuda is not None))
if force is True and torch.version.cuda is None:
    sys.exit("FORCE_CUDA=1 but the installed torch %s is a CPU-only build" % torch.__version__)
emulate = bool(_env_flag("IMTOK_EMULATE_CUDA"))
debug = bool(_env_flag("IMTOK_DEBUG"))

has_gpu = with_cuda and gpu_visible()
if with_cuda:
    os.environ["CUDA_HOME"] = cuda_home
    cpp_extension.CUDA_HOME = cuda_home  # torch's own guess from a wrapper script is wrong
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not has_gpu:
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"

cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
if not emulate:
    cpp_sources = [s for s in cpp_sources if not s.endswith("_emu.cpp")]
cu_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True)) if with_cuda else []

opt = ["-O0", "-g"] if debug else ["-O3"]
# -fopenmp: at::parallel_for is a header template whose `#pragma omp parallel` is compiled into this
# extension; without the flag every CPU kernel silently runs on one thread. The OpenMP runtime is the
# libgomp.so.1 that torch already loaded (same soname), so there is one thread pool.
cxx_flags = opt + ["-std=c++20", "-fvisibility=hidden", "-fopenmp"]
# No --use_fast_math: exact parity with torch's fp32 math on the device too.
nvcc_flags = opt[:1] + ["-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
macros = []
if with_cuda:
    macros.append(("IMTOK_WITH_CUDA", "1"))
if emulate:
    macros.append(("IMTOK_EMULATE_CUDA", "1"))
    cxx_flags.append("-pthread")

build_info = {
    "torch_version": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "with_cuda": with_cuda,
    "nvcc_version": nvcc_version(cuda_home) if with_cuda else None,
    "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
    "emulated_cuda": emulate,
    "python": sys.version.split()[0],
}
with open(os.path.join(ROOT, "imtok_cuda", "_build_info.json"), "w") as f:
    json.dump(build_info, f, indent=1)
print("imtok_cuda build:", build_info)

# Seconds of one core per translation unit, measured on a 2-vCPU VM (torch 2.14 headers, -O3): C++ files about
# 45 s, CUDA files about 55 s per arch. With two archs the CUDA objects are about 70% of a full build.
SECONDS_PER_CPP, SECONDS_PER_CU_ARCH = 45, 55


def build_plan(cpp_sources, cu_sources, arch_list, jobs, cpus, gpu_seen):
    """What `build_ext` is about to compile and roughly how long it takes, printed before the first compile
    (the build is otherwise silent for minutes)."""
    emu = [s for s in cpp_sources if s.endswith("_emu.cpp")]
    archs = [a for a in re.split(r"[;, ]+", arch_list or "") if a]
    n_arch = max(len(archs), 1)
    core_s = SECONDS_PER_CPP * len(cpp_sources) + SECONDS_PER_CU_ARCH * n_arch * len(cu_sources)
    minutes = core_s / max(min(jobs, cpus), 1) / 60
    lines = [f"imtok_cuda: compiling {len(cpp_sources) + len(cu_sources)} translation units, roughly "
             f"{max(minutes, 1):.0f} min with {jobs} parallel jobs on {cpus} CPUs (longer on a busy machine); "
             "ninja prints [done/total] as files finish",
             f"  C++ CPU kernels:       {len(cpp_sources) - len(emu)} files"]
    if emu:
        lines.append(f"  emulated CUDA kernels: {len(emu)} files (device code on CPU threads, for tests; "
                     "IMTOK_EMULATE_CUDA=1)")
    if cu_sources:
        share = SECONDS_PER_CU_ARCH * n_arch * len(cu_sources) / core_s
        arch_names = ";".join(archs) or "(the visible GPU)"
        lines.append(f"  CUDA kernels:          {len(cu_sources)} files x {n_arch} arch(s) {arch_names} with nvcc, "
                     f"about {100 * share:.0f}% of the compile time")
        if not gpu_seen:
            lines.append("  No GPU visible here: if this machine will not run CUDA, FORCE_CUDA=0 skips the CUDA "
                         f"kernels (about {100 * share:.0f}% of the compile time)"
                         + ("; TORCH_CUDA_ARCH_LIST=9.0 (say) builds one arch only" if n_arch > 1 else ""))
    else:
        lines.append("  CUDA kernels:          none (CPU-only build: " +
                     ("FORCE_CUDA=0)" if force is False else "no CUDA toolkit or a CPU-only torch)"))
    return "\n".join(lines)


class BuildExtensionWithPlan(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    def run(self):
        jobs = int(os.environ.get("MAX_JOBS") or 0) or (os.cpu_count() or 1) + 2  # ninja's default
        print(build_plan(cpp_sources, cu_sources, build_info["cuda_arch_list"], jobs, os.cpu_count() or 1, has_gpu),
              flush=True)
        super().run()


Ext = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
ext = Ext(
    name="imtok_cuda._C",
    sources=cpp_sources + cu_sources,
    include_dirs=[os.path.join(ROOT, "csrc")],
    define_macros=macros,
    extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if with_cuda else {"cxx": cxx_flags},
    extra_link_args=["-fopenmp"] + (["-pthread"] if emulate else []),
    py_limited_api=False,
)

setup(
    packages=find_packages(include=["imtok_cuda", "imtok_cuda.*"])
    + ["imtok." + p if p else "imtok" for p in [""] + find_packages("python/imtok")]
    + ["imtok_benchmarks"],
    package_dir={"imtok": "python/imtok", "imtok_benchmarks": "benchmarks"},
    package_data={"imtok_cuda": ["_build_info.json"]},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtensionWithPlan},
)
