"""Child process of tests/test_hostile.py: runs hostile-input cases and reports each outcome as one JSON line.

stdin: a JSON list of cases {"id", "code", "variant"}; before running a case the child prints
{"start": id} (flushed), after it {"id", "outcome": "raised" | "ok", "type", "message", "value"}. When the
process dies in a case (SIGSEGV, SIGFPE, abort), the parent sees a "start" without its result: that case crashed.

Each case's code runs in a fresh namespace holding torch, the imtok_cuda modules, OPS (the ops under test:
torch.ops.imtok_cuda, or torch.ops.imtok_cuda_emu for the "emu" variant, i.e. the CUDA launchers + kernels on
CPU threads) and helpers; it may set `result` to a bool (the case's value check). The "fake" variant runs the code
under FakeTensorMode (tensors it creates are fake): the fake kernels must reject what the real ones reject.
"""
import json
import math
import sys
import traceback


def main():
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    import imtok_cuda
    import imtok_cuda.nn.quantizers as nnq
    import imtok_cuda.nn.splat as nns
    from imtok_cuda import attention, merge, prune, sampling, shuffle, splat, vq
    import imtok_cuda.reference.attention
    import imtok_cuda.reference.merge
    import imtok_cuda.reference.prune
    import imtok_cuda.reference.sampling
    import imtok_cuda.reference.shuffle
    import imtok_cuda.reference.splat
    import imtok_cuda.reference.vq
    import imtok_cuda.reference.vq_quantizers
    from imtok_cuda import reference

    emu_ops = torch.ops.imtok_cuda_emu if imtok_cuda.emulation_available() else None

    def close(a, b, tol=1e-4):
        """Equal up to tol, with NaN exactly where the other has NaN (and infinities equal)."""
        a, b = a.double(), b.double()
        return (a.shape == b.shape and torch.equal(torch.isnan(a), torch.isnan(b))
                and torch.allclose(a, b, rtol=tol, atol=tol, equal_nan=True))

    def attn_vs_ref(ops, q, k, v, key_bias=None, key_mask=None, causal=False, tol=1e-4):
        """attention_forward with every side output == the reference (out, lse, cls_attn, col_sum), NaNs
        included; returns (ok, out, lse)."""
        out, lse, cls, col = ops.attention_forward(q, k, v, key_bias, key_mask, causal, None, True, True, 0, -1)
        r = reference.attention.attention(q, k, v, key_bias, key_mask, causal, return_lse=True,
                                          return_cls_attn=True, return_col_sum=True)
        ok = close(out, r.out, tol) and close(lse, r.lse, tol) and close(cls, r.cls_attn, tol) and close(
            col, r.col_sum, tol)
        return ok, out, lse
    cases = json.load(sys.stdin)
    torch.set_num_threads(1)
    for case in cases:
        print(json.dumps({"start": case["id"]}), flush=True)
        variant = case["variant"]
        ns = dict(torch=torch, math=math, imtok_cuda=imtok_cuda, vq=vq, merge=merge, prune=prune, shuffle=shuffle,
                  sampling=sampling, splat=splat, attention=attention, reference=reference, nnq=nnq, nns=nns,
                  OPS=emu_ops if variant == "emu" else torch.ops.imtok_cuda, result=True, close=close,
                  attn_vs_ref=attn_vs_ref)
        torch.manual_seed(0)
        rep = {"id": case["id"]}
        try:
            if variant == "emu" and emu_ops is None:
                raise RuntimeError("built without IMTOK_EMULATE_CUDA=1")
            if variant == "fake":
                with FakeTensorMode():
                    exec(case["code"], ns)
            else:
                exec(case["code"], ns)
            rep.update(outcome="ok", value=bool(ns["result"]) if variant != "fake" else True)
        except BaseException as e:  # noqa: BLE001  (the outcome is what is being tested)
            rep.update(outcome="raised", type=type(e).__name__,
                       mro=[c.__name__ for c in type(e).__mro__], message=str(e)[:2000],
                       tb=traceback.format_exc(limit=3)[-1500:])
        print(json.dumps(rep), flush=True)


if __name__ == "__main__":
    main()
