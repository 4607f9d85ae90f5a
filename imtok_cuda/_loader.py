"""Load the compiled extension once, with an error that says what it was built for and what is running."""
import json
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))


def build_info():
    """What setup.py recorded at build time (torch, CUDA, archs, emulation)."""
    try:
        with open(os.path.join(_HERE, "_build_info.json")) as f:
            return json.load(f)
    except OSError:
        return {}


def _load():
    try:
        from . import _C  # noqa: F401  (registers the ops with the dispatcher)
    except ImportError as e:
        info = build_info()
        raise ImportError(
            "imtok_cuda._C failed to load: {}\n  built against torch {} (CUDA {}), running torch {} (CUDA {}).\n"
            "  Rebuild with `pip install --no-build-isolation -e .` against the installed torch.".format(
                e, info.get("torch_version", "?"), info.get("torch_cuda", "?"), torch.__version__, torch.version.cuda
            )
        ) from e
    if _C.torch_version.split("+")[0] != torch.__version__.split("+")[0]:
        raise ImportError(
            "imtok_cuda._C was built against torch {} but torch {} is running; rebuild with "
            "`pip install --no-build-isolation -e .`".format(_C.torch_version, torch.__version__)
        )
    return _C


C = _load()


LIMITS = dict(C.limits)  # the kernels' size limits (csrc/common/limits.h): max_topk, max_head_dim, ...


def emulation_available():
    """True when the build has the emulated CUDA kernels (torch.ops.imtok_cuda_emu.*)."""
    return bool(C.emulated_cuda)
