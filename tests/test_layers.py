"""imtok.layers: the attention entry every model uses, its reference switch and the KV cache."""
import pytest
import torch
import torch.nn.functional as F

import imtok
from imtok.layers import Attention, KVCache, attention, reference_enabled, use_reference
from imtok_cuda.reference import attention as ref


def _qkv(B=2, H=3, Nq=7, Nk=7, d=16, dtype=torch.float64):
    return (torch.randn(B, H, Nq, d, dtype=dtype), torch.randn(B, H, Nk, d, dtype=dtype),
            torch.randn(B, H, Nk, d, dtype=dtype))


def test_switch_is_scoped_and_nests():
    assert not reference_enabled()
    with use_reference():
        assert reference_enabled() and imtok.reference_enabled()
        with use_reference(False):
            assert not reference_enabled()
        assert reference_enabled()
    assert not reference_enabled()


def test_switch_resets_on_error():
    with pytest.raises(RuntimeError):
        with use_reference():
            raise RuntimeError("boom")
    assert not reference_enabled()


@pytest.mark.parametrize("causal", [False, True])
def test_plain_call_goes_to_sdpa(monkeypatch, causal):
    q, k, v = _qkv()
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    out = attention(q, k, v, causal=causal)
    assert calls == [1]
    torch.testing.assert_close(out, ref.attention(q, k, v, causal=causal))


@pytest.mark.parametrize("kind", ["bias", "mask", "causal_decode", "side", "packed"])
def test_fused_and_reference_paths_agree(monkeypatch, kind):
    q, k, v = _qkv(Nq=3 if kind == "causal_decode" else 7)
    kw = {}
    if kind == "bias":
        kw["key_bias"] = torch.randn(2, 7, dtype=torch.float64)
    elif kind == "mask":
        kw["key_mask"] = torch.rand(2, 7) > 0.4
    elif kind == "causal_decode":
        kw["causal"] = True  # Nq < Nk: bottom-right aligned, which SDPA's top-left mask would get wrong
    elif kind == "side":
        kw.update(return_lse=True, return_cls_attn=True, return_col_sum=True)
    else:
        q, k, v = (t[:1] for t in (q, k, v))
        kw["cu_seqlens"] = torch.tensor([0, 3, 7], dtype=torch.int32)
    monkeypatch.setattr(F, "scaled_dot_product_attention", None)  # must not be used for any of these
    fused = attention(q, k, v, **kw)
    with use_reference():
        expected = attention(q, k, v, **kw)
    assert expected is not None
    for a, b in zip(fused if isinstance(fused, tuple) else [fused], expected if isinstance(expected, tuple) else [expected]):
        if a is not None:
            torch.testing.assert_close(a, b)
    if kind == "causal_decode":  # the last query sees every key, the first sees all but the last two
        full = ref.attention(q[:, :, -1:], k, v)
        torch.testing.assert_close(fused[:, :, -1:], full)


def test_reference_switch_reaches_the_reference(monkeypatch):
    q, k, v = _qkv()
    monkeypatch.setattr(ref, "attention", lambda *a, **kw: "reference")
    with use_reference():
        assert attention(q, k, v) == "reference"


def test_module_matches_explicit_attention():
    torch.manual_seed(1)
    layer = Attention(24, 4).double()
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    qkv = layer.qkv(x).reshape(2, 5, 3, 4, 6).permute(2, 0, 3, 1, 4)
    p = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / 6 ** 0.5, dim=-1)
    expected = layer.proj((p @ qkv[2]).transpose(1, 2).reshape(2, 5, 24))
    torch.testing.assert_close(layer(x), expected)
    res = layer(x, side_outputs=True)
    torch.testing.assert_close(res.out, expected)
    torch.testing.assert_close(res.cls_attn, p[:, :, 0].mean(1))
    torch.testing.assert_close(res.col_sum, p.sum(2).mean(1))
    torch.testing.assert_close(res.keys, qkv[1])


def test_kv_cache_decoding_equals_full_causal_pass():
    torch.manual_seed(2)
    layer = Attention(32, 4).double()
    x = torch.randn(3, 9, 32, dtype=torch.float64)
    full = layer(x, causal=True)
    cache = KVCache(3, 4, 16, 8, dtype=torch.float64)
    steps = [layer(x[:, :4], causal=True, kv_cache=cache)]  # a prefix, then one token at a time
    steps += [layer(x[:, i:i + 1], causal=True, kv_cache=cache) for i in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), full)
    assert cache.length == 9
    with pytest.raises(ValueError, match="at most 16"):
        cache.append(torch.zeros(3, 4, 8, 8, dtype=torch.float64), torch.zeros(3, 4, 8, 8, dtype=torch.float64))
    cache.reset()
    assert cache.length == 0


def test_module_rejects_bad_head_count():
    with pytest.raises(ValueError, match="num_heads"):
        Attention(10, 3)


def test_module_gradients_on_both_paths():
    torch.manual_seed(3)
    layer = Attention(16, 2).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, 6, dtype=torch.float64)
    g_fused = torch.autograd.grad(layer(x, key_bias=bias).square().sum(), [x, layer.qkv.weight])
    with use_reference():
        g_ref = torch.autograd.grad(layer(x, key_bias=bias).square().sum(), [x, layer.qkv.weight])
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b)
