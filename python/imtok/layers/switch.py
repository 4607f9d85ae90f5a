"""The one switch between the fused ops and their pure-PyTorch references, for every model and layer.

    with imtok.use_reference():        # everything inside runs imtok_cuda.reference.* instead of the kernels
        recon_ref, _ = tokenizer(x)

Models never take a `fused=` / `use_reference=` argument: layers ask `reference_enabled()` at call time, so one
context switches a whole model (attention, quantizers, sampling, token reduction) and a test can compare the two
paths with the same weights. The flag is a context variable: per thread and per asyncio task.
"""
import contextlib
import contextvars

__all__ = ["use_reference", "reference_enabled"]

_REFERENCE = contextvars.ContextVar("imtok_use_reference", default=False)


def reference_enabled() -> bool:
    """True inside `use_reference()`: layers must call the reference ops."""
    return _REFERENCE.get()


@contextlib.contextmanager
def use_reference(enabled: bool = True):
    """Run the enclosed code on the pure-PyTorch reference ops (enabled=True) or the fused ops (False)."""
    token = _REFERENCE.set(bool(enabled))
    try:
        yield
    finally:
        _REFERENCE.reset(token)
