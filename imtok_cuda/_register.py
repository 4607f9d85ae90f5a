"""Fake kernels and autograd formulas, registered once per op for every namespace the build defines.

``torch.ops.imtok_cuda`` is always there; an emulation build (IMTOK_EMULATE_CUDA=1) defines the same schemas
again under ``torch.ops.imtok_cuda_emu``, where the device kernels run on CPU threads. Family modules register
through these two functions only, so both namespaces get the same fake kernel and the same backward:

    @register_fake("merge_unmerge")
    def _unmerge_fake(y, src_idx, ...): ...

    def _unmerge_backward(ops, ctx, grad):    # ops: torch.ops.<namespace> of the op being differentiated
        return ops.merge_apply(grad, ...), None, ...

    register_autograd("merge_unmerge", _unmerge_backward, _unmerge_setup)
"""
import functools

import torch

from ._loader import emulation_available

NAMESPACES = ("imtok_cuda", "imtok_cuda_emu") if emulation_available() else ("imtok_cuda",)


def register_fake(op):
    """Decorator: `fn` becomes the fake (meta) kernel of `op` in every namespace."""

    def decorate(fn):
        for ns in NAMESPACES:
            torch.library.register_fake("{}::{}".format(ns, op))(fn)
        return fn

    return decorate


def register_autograd(op, backward, setup_context):
    """Registers `backward(ops, ctx, *grads)` for `op` in every namespace; `ops` is that namespace's
    ``torch.ops.<ns>``, so the backward runs the kernels of the same build (CUDA/CPU or emulated) as the forward."""
    for ns in NAMESPACES:
        torch.library.register_autograd("{}::{}".format(ns, op), functools.partial(backward, getattr(torch.ops, ns)),
                                        setup_context=setup_context)
