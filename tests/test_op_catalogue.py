"""The op catalogue (every schema of csrc/imtok_cuda.cpp) is complete in every namespace the build defines.

For each op of torch.ops.imtok_cuda: a CPU kernel, a CUDA kernel (CUDA builds), the emulated device kernel
under torch.ops.imtok_cuda_emu (emulation builds), a fake kernel in both namespaces, and autograd in both
namespaces for the differentiable ops: those with a backward op (x_backward, or y_backward for y_forward) and
those whose backward is written in Python from other ops. An op that lost a registration fails here, by name.
"""
import sys

import pytest
import torch
from torch._library.simple_registry import singleton as _simple_registry
from torch.utils._python_dispatch import TorchDispatchMode

import imtok_cuda

EMU = imtok_cuda.emulation_available()
WITH_CUDA = bool(imtok_cuda._C.with_cuda)
NAMESPACES = ("imtok_cuda", "imtok_cuda_emu") if EMU else ("imtok_cuda",)

# Ops without a device kernel, and why. They keep their CPU kernel; the emulated namespace has none either.
NO_DEVICE_KERNEL = {
    "merge_random2d_split": "tomesd's destination split: other devices call torch.argsort there, as tomesd does",
}

# Differentiable ops whose backward is written in Python from other ops (no <op>_backward schema).
PYTHON_BACKWARD = {
    "vq_nearest", "vq_nearest_topk",  # distances: closed form in x and the codebook
    "merge_unmerge",  # adjoint: a "sum" merge
    "shuffle_token_shuffle", "shuffle_token_unshuffle",  # adjoint: the inverse permutation
    "shuffle_linear", "shuffle_linear_unshuffle",  # adjoint: the mirrored fused op with W^T
}


def op_names():
    """Every op of the catalogue (the imtok_cuda namespace), without the namespace."""
    names = {s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("imtok_cuda::")}
    assert names, "no imtok_cuda ops registered"
    return names


def _backward_op(name):
    stem = name[: -len("_forward")] if name.endswith("_forward") else name
    return stem + "_backward"


def differentiable_ops():
    names = op_names()
    with_backward_op = {n for n in names if not n.endswith("_backward") and _backward_op(n) in names}
    assert PYTHON_BACKWARD <= names, f"stale PYTHON_BACKWARD entries: {sorted(PYTHON_BACKWARD - names)}"
    return with_backward_op | PYTHON_BACKWARD


def _has(ns, name, key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{ns}::{name}", key)


def _missing(ns, key, names):
    return sorted(n for n in names if not _has(ns, n, key))


def test_every_op_has_a_cpu_kernel():
    assert not _missing("imtok_cuda", "CPU", op_names()), "ops without a CPU kernel"


@pytest.mark.skipif(not WITH_CUDA, reason="built without CUDA (FORCE_CUDA=0)")
def test_every_op_has_a_cuda_kernel():
    assert not _missing("imtok_cuda", "CUDA", op_names() - set(NO_DEVICE_KERNEL)), "ops without a CUDA kernel"


@pytest.mark.emulated
def test_every_op_has_an_emulated_device_kernel():
    names = op_names()
    assert not _missing("imtok_cuda_emu", "CPU", names - set(NO_DEVICE_KERNEL)), "ops without an emulated kernel"
    assert not [n for n in NO_DEVICE_KERNEL if _has("imtok_cuda_emu", n, "CPU")], "NO_DEVICE_KERNEL is stale"


@pytest.mark.parametrize("ns", NAMESPACES)
def test_every_op_has_a_fake_kernel(ns):
    no_fake = sorted(n for n in op_names() if _simple_registry.find(f"{ns}::{n}").fake_impl.kernel is None)
    assert not no_fake, f"ops without a fake kernel in {ns}: {no_fake}"


@pytest.mark.parametrize("ns", NAMESPACES)
def test_every_differentiable_op_has_autograd(ns):
    assert not _missing(ns, "Autograd", differentiable_ops()), f"differentiable ops without autograd in {ns}"


def test_no_other_op_claims_autograd():
    """Autograd registered on an op not listed as differentiable means the lists above are out of date."""
    extra = sorted(n for n in op_names() - differentiable_ops() if _has("imtok_cuda", n, "Autograd"))
    assert not extra, f"ops with autograd that differentiable_ops() does not know: {extra}"


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.mark.emulated
def test_emulated_autograd_runs_emulated_kernels():
    """The backward of an emulated op runs that namespace's kernels, not the CPU ones (and vice versa)."""
    for ns in NAMESPACES:
        x = torch.randn(1, 4, 3, requires_grad=True)
        weight = torch.randn(5, 12, requires_grad=True)
        y = getattr(torch.ops, ns).shuffle_linear(x, 1, 1, 2, weight, None)
        with _OpLog() as log:
            y.sum().backward()
        ours = [n for n in log.names if n.startswith("imtok_cuda")]
        assert ours and all(n.startswith(ns + "::") for n in ours), (ns, ours)
        assert x.grad is not None and weight.grad is not None


def test_limits_are_read_from_the_compiled_module():
    """csrc/common/limits.h is the one definition: the Python checks use the values the kernels were built with."""
    limits = imtok_cuda._C.limits
    assert sys.modules["imtok_cuda.vq.nearest"].MAX_TOPK == limits["max_topk"]
    assert imtok_cuda.attention.MAX_HEAD_DIM == limits["max_head_dim"]
    k = limits["max_topk"] + 1
    x, codebook = torch.randn(2, 4), torch.randn(k, 4)
    for call in (torch.ops.imtok_cuda.vq_nearest_topk, imtok_cuda.vq.nearest_topk):
        with pytest.raises(ValueError, match=r"k must be in \[1, .*%d" % limits["max_topk"]):
            call(x, codebook, k)


def test_production_code_does_not_import_the_reference():
    """imtok_cuda.reference is the tests' oracle: production modules never import it (it may import their types)."""
    import ast
    import pathlib

    root = pathlib.Path(imtok_cuda.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if "reference" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                prefix = node.module + "." if node.module else ""
                names = [node.module or ""] + [prefix + a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n == "reference" or n.startswith("reference.") or ".reference" in n for n in names):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, f"production modules importing the reference: {offenders}"
