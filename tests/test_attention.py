"""attention: reference vs CPU kernel vs emulated CUDA kernel (vs real CUDA with -m cuda).

Every comparison is against imtok_cuda.reference.attention (explicit softmax attention in fp64/fp32).
"""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import imtok_cuda
from imtok_cuda import attention as A
from imtok_cuda.reference import attention as ref

IMPLS = ["cpu", "emulated"]


def ops_for(impl, request):
    return torch.ops.imtok_cuda if impl == "cpu" else request.getfixturevalue("emu")


def make(B, H, Nq, Nk, d, dtype=torch.float64, bias=False, mask=False, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, d, generator=g, dtype=torch.float64).to(dtype).to(device)
    k = torch.randn(B, H, Nk, d, generator=g, dtype=torch.float64).to(dtype).to(device)
    v = torch.randn(B, H, Nk, d, generator=g, dtype=torch.float64).to(dtype).to(device)
    kb = torch.randn(B, Nk, generator=g, dtype=torch.float64).to(dtype).to(device) if bias else None
    km = (torch.rand(B, Nk, generator=g) > 0.35).to(device) if mask else None
    return q, k, v, kb, km


def assert_same_inf(a, b):
    """Same -inf positions (rows without keys), values compared elsewhere."""
    assert torch.equal(torch.isneginf(a), torch.isneginf(b))
    assert not torch.isnan(a).any()


def check_forward(ops, q, k, v, kb, km, causal, scale=None, cols=None, cu=None, tol=None, prefix=0):
    start, end = (0, -1) if cols is None else (cols[0], -1 if cols[1] is None else cols[1])
    out, lse, cls, col = ops.attention_forward(q, k, v, kb, km, causal, scale, True, True, start, end, cu, prefix)
    r = ref.attention(q, k, v, kb, km, causal, scale, True, True, True, cols, cu, prefix)
    if tol is None:
        tol = 1e-12 if q.dtype == torch.float64 else 2e-5
    assert out.dtype == q.dtype and out.shape == q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    assert lse.dtype == acc and cls.dtype == acc and col.dtype == acc
    torch.testing.assert_close(out, r.out, rtol=tol, atol=tol)
    assert_same_inf(lse, r.lse)
    fin = torch.isfinite(r.lse)
    torch.testing.assert_close(lse[fin], r.lse[fin], rtol=tol, atol=tol)
    torch.testing.assert_close(cls, r.cls_attn, rtol=tol, atol=tol)
    torch.testing.assert_close(col, r.col_sum, rtol=tol, atol=tol * max(1, q.shape[2]))
    return out, lse, cls, col


# (Nq, Nk, d, bias, mask, causal): compact coverage of every option, Nq != Nk both ways, odd d, N = 1 / 0
CASES = [
    (1, 1, 8, False, False, False),
    (5, 7, 33, True, False, False),
    (7, 5, 16, False, True, True),  # causal with Nq > Nk: first 2 queries see nothing
    (13, 13, 8, True, True, True),
    (9, 40, 16, True, True, False),
    (40, 9, 33, False, False, True),
    (17, 23, 1, True, False, True),
    (0, 5, 8, True, True, False),
    (3, 35, 128, True, True, True),  # d = 128: the largest head dim (shared-memory sizing, channel loops)
    (6, 0, 8, False, False, False),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("Nq,Nk,d,bias,mask,causal", CASES)
def test_forward_matches_reference(impl, request, dtype, Nq, Nk, d, bias, mask, causal):
    ops = ops_for(impl, request)
    q, k, v, kb, km = make(2, 2, Nq, Nk, d, dtype, bias, mask)
    check_forward(ops, q, k, v, kb, km, causal)
    check_forward(ops, q, k, v, kb, km, causal, scale=0.37, cols=(2, 6))


@pytest.mark.parametrize("Nq,Nk,causal", [(130, 70, True), (70, 1100, False), (1100, 1100, True)])
def test_cpu_multiple_blocks_and_online_softmax(Nq, Nk, causal):
    """Several query blocks (64) and key blocks, and Nk > 1024 (online softmax over key chunks)."""
    q, k, v, kb, km = make(1, 2, Nq, Nk, 8, torch.float32, bias=True, mask=True, seed=1)
    check_forward(torch.ops.imtok_cuda, q, k, v, kb, km, causal, cols=(3, 100), tol=5e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_fused_side_outputs(causal):
    """>= 32 (batch, head) items and Nk <= 1024: the CPU forward computes the CLS row and the column sums in
    its single pass (query blocks in order per item); must equal the reference, dense and packed."""
    q, k, v, kb, km = make(4, 8, 70, 50, 8, torch.float64, bias=True, mask=True, seed=15)
    out, lse, cls, col = check_forward(torch.ops.imtok_cuda, q, k, v, kb, km, causal, cols=(5, 66))
    F = torch.ops.imtok_cuda.attention_forward
    assert torch.equal(F(q, k, v, kb, km, causal, None, True, False, 5, 66)[2], cls)  # CLS row alone
    assert torch.equal(F(q, k, v, kb, km, causal, None, False, True, 5, 66)[3], col)  # column sums alone
    assert torch.equal(F(q, k, v, kb, km, causal)[0], out)  # output-only path: same numbers
    cu = torch.tensor([0, 30, 30, 100, 101], dtype=torch.int32)
    q, k, v, kb, km = make(1, 8, 101, 101, 8, torch.float64, bias=True, mask=True, seed=16)
    check_forward(torch.ops.imtok_cuda, q, k, v, kb, km, causal, cols=(1, None), cu=cu)


@pytest.mark.parametrize("impl", IMPLS)
def test_mask_all_but_one_key(impl, request):
    ops = ops_for(impl, request)
    q, k, v, kb, _ = make(2, 3, 6, 11, 8, torch.float64, bias=True)
    km = torch.zeros(2, 11, dtype=torch.bool)
    km[0, 4] = True
    km[1, 10] = True
    out, lse, cls, col = check_forward(ops, q, k, v, kb, km, False)
    torch.testing.assert_close(out[0], v[0, :, 4:5].expand(3, 6, 8))
    torch.testing.assert_close(out[1], v[1, :, 10:11].expand(3, 6, 8))
    s = (q[0] @ k[0, :, 4].unsqueeze(-1)).squeeze(-1) / math.sqrt(8) + kb[0, 4]
    torch.testing.assert_close(lse[0], s)
    torch.testing.assert_close(cls[0, :, 4], torch.ones(3, dtype=cls.dtype))  # exp(s - lse), s recomputed
    assert cls[0, :, :4].eq(0).all() and cls[0, :, 5:].eq(0).all()
    torch.testing.assert_close(col[1, :, 10], torch.full((3,), 6.0, dtype=col.dtype))


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_rows_give_zero_and_neg_inf(impl, request):
    ops = ops_for(impl, request)
    q, k, v, kb, _ = make(2, 2, 5, 7, 8, torch.float64, bias=True)
    km = torch.ones(2, 7, dtype=torch.bool)
    km[1] = False
    out, lse, cls, col = ops.attention_forward(q, k, v, kb, km, False, None, True, True)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.isneginf(lse[1]).all() and torch.isfinite(lse[0]).all()
    assert torch.equal(cls[1], torch.zeros_like(cls[1])) and torch.equal(col[1], torch.zeros_like(col[1]))
    go = torch.randn_like(out)
    dq, dk, dv, db = ops.attention_backward(go, None, q, k, v, out, lse, kb, km, False, None, None, True)
    for g in (dq, dk, dv, db):
        assert torch.isfinite(g).all()
    assert torch.equal(dq[1], torch.zeros_like(dq[1])) and torch.equal(db[1], torch.zeros_like(db[1]))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("causal,prefix", [(False, 0), (True, 0), (True, 5)])
def test_packed_sequences_equal_separate_calls(impl, request, causal, prefix):
    """With cu_seqlens each sequence attends within itself; a causal_prefix applies to each sequence (FlexTok's
    images of one size packed with their registers)."""
    ops = ops_for(impl, request)
    lens = [5, 0, 12, 1, 9]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
    T = int(cu[-1])
    q, k, v, kb, km = make(1, 2, T, T, 16, torch.float64, bias=True, mask=True, seed=3)
    out, lse, cls, col = check_forward(ops, q, k, v, kb, km, causal, cols=(1, 7), cu=cu, prefix=prefix)
    go = torch.randn_like(out)
    dq, dk, dv, db = ops.attention_backward(go, None, q, k, v, out, lse, kb, km, causal, None, cu, True, prefix)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if a == b:
            continue
        sl = slice(a, b)
        o_s, l_s, c_s, s_s = ops.attention_forward(q[:, :, sl], k[:, :, sl], v[:, :, sl], kb[:, sl], km[:, sl],
                                                   causal, None, True, True, 1, 7, None, prefix)
        for full, part in zip((out, cls, col), (o_s, c_s, s_s)):
            torch.testing.assert_close(full[:, :, sl], part, rtol=1e-12, atol=1e-12)
        # backward of the packed call == backward of the separate calls
        g = ops.attention_backward(go[:, :, sl], None, q[:, :, sl], k[:, :, sl], v[:, :, sl], o_s, l_s, kb[:, sl],
                                   km[:, sl], causal, None, None, True, prefix)
        for full, part in zip((dq, dk, dv), g[:3]):
            torch.testing.assert_close(full[:, :, sl], part, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(db[:, sl], g[3], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_fp32(impl, request, dtype):
    ops = ops_for(impl, request)
    # fp16 / bf16 run on tensor cores on a GPU (tested below); this is the SIMT kernel, all-fp32 inside
    forward = ops.attention_forward if impl == "cpu" else ops.attention_forward_simt
    q, k, v, kb, km = make(2, 2, 19, 23, 16, dtype, bias=True, mask=True, seed=4)
    out, lse, cls, col = forward(q, k, v, kb, km, True, None, True, True)
    r = ref.attention(q, k, v, kb, km, True, None, True, True, True)  # fp32 math on the same half inputs
    assert out.dtype == dtype and lse.dtype == torch.float32
    # The kernel and the reference both compute in fp32 from the same half inputs; they differ by fp32
    # summation order (~1e-6) and then both round out to the half dtype once, so they agree to one half ulp:
    # |out| < 4 here, ulp(4) = 2^-8 (fp16) and 2^-5 (bf16). The fp32 side outputs agree to fp32 rounding.
    ulp = 2.0 ** -8 if dtype == torch.float16 else 2.0 ** -5
    torch.testing.assert_close(out.float(), r.out.float(), rtol=0, atol=ulp)
    fin = torch.isfinite(r.lse)
    torch.testing.assert_close(lse[fin], r.lse[fin], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls, r.cls_attn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(col, r.col_sum, rtol=1e-5, atol=1e-4)


# ---- tensor-core forward (fp16 / bf16): the attention_tc kernels, emulated wmma here, tensor cores with -m cuda ----
def tensor_core_atol(v, dtype):
    """P is rounded to the input type before P V (as in FlashAttention): each weight carries a relative error
    of at most u (2^-11 fp16, 2^-8 bf16) and the weights sum to 1, so |out - ref| <= u max|v|, plus one ulp of
    max|v| for the two final roundings (kernel and reference both round out to the half type once)."""
    u = 2.0 ** -11 if dtype == torch.float16 else 2.0 ** -8
    vmax = v.abs().max().item() if v.numel() else 1.0
    ulp = 2.0 ** math.floor(math.log2(max(vmax, 1e-3))) * 2 * u
    return 1.05 * (u * vmax + ulp)


# (Nq, Nk, d, bias, mask, causal): several 64-query blocks and 64-key tiles (partial ones too), d padded to
# a multiple of 16 (1, 33), d = 128 (the largest tiles), causal both ways, and empty sides
TC_CASES = [
    (1, 1, 8, False, False, False),
    (130, 150, 64, True, True, False),
    (70, 40, 33, False, True, True),   # causal, Nq > Nk: the first 30 queries see no key
    (40, 200, 128, True, False, True),
    (9, 65, 1, True, True, False),
    (0, 5, 16, True, True, False),
    (6, 0, 16, False, False, False),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("Nq,Nk,d,bias,mask,causal", TC_CASES)
def test_tensor_core_forward_matches_reference(emu, dtype, Nq, Nk, d, bias, mask, causal):
    """attn_fwd_tc_kernel and attn_colsum_tc_kernel (csrc/attention/attention_tc_kernels.cuh) through the
    emulated wmma, against the reference and against their SIMT twins (attn_fwd_kernel, attn_colsum_kernel)."""
    q, k, v, kb, km = make(2, 1, Nq, Nk, d, dtype, bias, mask, seed=5)
    out, lse, cls, col = emu.attention_forward(q, k, v, kb, km, causal, None, True, True)
    r = ref.attention(q, k, v, kb, km, causal, None, True, True, True)  # fp32 math on the same half inputs
    assert out.dtype == dtype and lse.dtype == torch.float32
    atol = tensor_core_atol(v, dtype)
    torch.testing.assert_close(out.float(), r.out.float(), rtol=0, atol=atol)
    # scores are fp32 sums of exact products on tensor cores too, so lse and the side outputs stay fp32-tight
    assert_same_inf(lse, r.lse)
    fin = torch.isfinite(r.lse)
    torch.testing.assert_close(lse[fin], r.lse[fin], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls, r.cls_attn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(col, r.col_sum, rtol=1e-5, atol=1e-4)
    # the SIMT twin (fp32 P) agrees within the same bound
    s_out, s_lse, _, _ = emu.attention_forward_simt(q, k, v, kb, km, causal)
    torch.testing.assert_close(out.float(), s_out.float(), rtol=0, atol=2 * atol)
    torch.testing.assert_close(lse[fin], s_lse[fin], rtol=1e-5, atol=1e-5)
    if Nq * Nk >= 100 * 100:  # the tensor-core kernel ran, not the twin: P rounded to the half type shows
        assert not torch.equal(out, s_out)


def explicit_backward(q, k, v, kb, km, causal, out, lse, go, prefix=0):
    """dq, dk, dv, per-key dbias and the |.|-products that bound the rounding of P and dS, in fp64 from the
    same half inputs and the kernel's own out and lse (so only the backward's arithmetic is compared)."""
    q, k, v, out, go, lse = (t.double() for t in (q, k, v, out, go, lse))
    scale = q.shape[-1] ** -0.5
    s = q @ k.transpose(-1, -2) * scale
    if kb is not None:
        s = s + kb.double()[:, None, None, :]
    keep = torch.ones_like(s, dtype=torch.bool)
    if km is not None:
        keep &= km[:, None, None, :]
    if causal:
        Nq, Nk = s.shape[-2:]
        keep &= torch.ones(Nq, Nk, dtype=torch.bool).tril(Nk - Nq) | (torch.arange(Nk) < prefix)
    p = torch.where(keep & torch.isfinite(lse)[..., None], torch.exp(s - lse[..., None]), torch.zeros_like(s))
    D = (go * out).sum(-1, keepdim=True)
    ds = p * (go @ v.transpose(-1, -2) - D)
    grads = (scale * ds @ k, scale * ds.transpose(-1, -2) @ q, p.transpose(-1, -2) @ go, ds.sum((1, 2)))
    bounds = (scale * ds.abs() @ k.abs(), scale * ds.abs().transpose(-1, -2) @ q.abs(),
              p.transpose(-1, -2) @ go.abs(), ds.abs().sum((1, 2)))
    # fp32 evaluation of dS = p (dP - D) carries an absolute error ~ eps p (|dO| |V| + |D|), even where the
    # exact dS is 0 (a query with one visible key): its products with |K|, |Q| bound that part
    dsn = p * (go.abs() @ v.abs().transpose(-1, -2) + D.abs())
    noise = (scale * dsn @ k.abs(), scale * dsn.transpose(-1, -2) @ q.abs(), p.transpose(-1, -2) @ go.abs(),
             dsn.sum((1, 2)))
    # fp16 subnormals (< 2^-14) round with an absolute error up to 2^-25 whatever their size: per element of
    # P / dS that enters a product (its |partner| summed) and once for the output itself
    m = (keep & torch.isfinite(lse)[..., None]).double()
    mass = (1 + scale * m @ k.abs(), 1 + scale * m.transpose(-1, -2) @ q.abs(), 1 + m.transpose(-1, -2) @ go.abs())
    return grads, bounds, noise, mass


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("Nq,Nk,d,bias,mask,causal", TC_CASES)
def test_tensor_core_backward_matches_reference(emu, dtype, Nq, Nk, d, bias, mask, causal):
    """attn_bwd_dq_tc_kernel and attn_bwd_dkv_tc_kernel (csrc/attention/attention_tc_kernels.cuh) through the
    emulated wmma, against the fp64 explicit backward and against their SIMT twins."""
    q, k, v, kb, km = make(1, 2, Nq, Nk, d, dtype, bias, mask, seed=8)
    go = torch.randn(q.shape[:-1] + (d,), generator=torch.Generator().manual_seed(9)).to(dtype)
    out, lse, _, _ = emu.attention_forward(q, k, v, kb, km, causal)
    got = emu.attention_backward(go, None, q, k, v, out, lse, kb, km, causal, None, None, kb is not None)
    assert_half_backward_within_bounds(got, q, k, v, kb, km, causal, out, lse, go)
    (rdq, rdk, rdv, _), _, noise, _ = explicit_backward(q, k, v, kb, km, causal, out, lse, go)
    u = 2.0 ** -11 if dtype == torch.float16 else 2.0 ** -8
    sub = 2.0 ** -25 if dtype == torch.float16 else 0.0
    # the SIMT twin (fp32 P and dS) is within the same bounds without the rounding of P and dS
    simt = emu.attention_backward_simt(go, None, q, k, v, out, lse, kb, km, causal, None, None, kb is not None)
    for g, r, nz in zip(simt[:3], (rdq, rdk, rdv), noise[:3]):
        assert torch.all((g.double() - r).abs() <= 1.05 * u * r.abs() + 1e-5 * nz + sub + 1e-30)
    if Nq * Nk >= 100 * 100:  # the tensor-core kernels ran, not the twins (P and dS rounded)
        assert not torch.equal(got[1], simt[1])


def assert_half_backward_within_bounds(got, q, k, v, kb, km, causal, out, lse, go, prefix=0):
    """Tensor-core backward (fp16 / bf16) against the fp64 explicit backward, element-wise bounds."""
    dtype = q.dtype
    got = [g.cpu() for g in got]
    q, k, v, out, lse, go = (t.cpu() for t in (q, k, v, out, lse, go))
    kb, km = (None if t is None else t.cpu() for t in (kb, km))
    (rdq, rdk, rdv, rdb), bounds, noise, mass = explicit_backward(q, k, v, kb, km, causal, out, lse, go, prefix)
    # P and dS are rounded to the input type before their products (u relative each, as in FlashAttention),
    # and dq, dk, dv are returned in the input type (u relative); fp32 arithmetic adds ~1e-6 of `noise`
    u = 2.0 ** -11 if dtype == torch.float16 else 2.0 ** -8
    sub = 2.0 ** -25 if dtype == torch.float16 else 0.0  # bf16 has fp32's exponent range
    for g, r, bound, nz, ms in zip(got[:3], (rdq, rdk, rdv), bounds[:3], noise[:3], mass):
        assert g.dtype == dtype and g.shape == r.shape
        tol = 1.05 * u * (bound + r.abs()) + 1e-5 * nz + sub * ms + 1e-30
        assert torch.all((g.double() - r).abs() <= tol), ((g.double() - r).abs() / tol).max().item()
    if kb is not None:  # dbias sums the fp32 dS: fp32-tight, then rounded to key_bias's dtype
        assert torch.all((got[3].double() - rdb).abs() <= 1.05 * u * rdb.abs() + 1e-5 * noise[3] + sub + 1e-30)


def test_tensor_core_masked_rows_and_packed_sequences(emu):
    q, k, v, kb, km = make(1, 2, 100, 100, 32, torch.float16, bias=True, mask=True, seed=6)
    km[0, :] = False
    km[0, 70] = True  # one key left
    out, lse, _, _ = emu.attention_forward(q, k, v, kb, km, False)
    torch.testing.assert_close(out, v[:, :, 70:71].expand_as(out), rtol=0, atol=0)  # p = 1 exactly
    km[0, 70] = False  # no key left: out 0, lse -inf
    out, lse, _, _ = emu.attention_forward(q, k, v, kb, km, False)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    # packed sequences: the same tiles as separate calls, so bit-identical
    cu = torch.tensor([0, 30, 30, 95, 100], dtype=torch.int32)
    km = torch.rand(1, 100, generator=torch.Generator().manual_seed(7)) > 0.2
    out, lse, cls, col = emu.attention_forward(q, k, v, kb, km, True, None, True, True, 2, 50, cu)
    r = ref.attention(q, k, v, kb, km, True, None, True, True, True, (2, 50), cu)
    torch.testing.assert_close(col, r.col_sum, rtol=1e-5, atol=1e-4)  # column sums over queries [2, 50)
    torch.testing.assert_close(cls, r.cls_attn, rtol=1e-5, atol=1e-5)
    for a, b in [(0, 30), (30, 95), (95, 100)]:
        o_s, l_s, c_s, s_s = emu.attention_forward(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], kb[:, a:b], km[:, a:b],
                                                   True, None, True, True, 2, 50)
        assert torch.equal(out[:, :, a:b], o_s) and torch.equal(lse[:, :, a:b], l_s)
        assert torch.equal(col[:, :, a:b], s_s) and torch.equal(cls[:, :, a:b], c_s)


@pytest.mark.parametrize("impl", IMPLS)
def test_noncontiguous_inputs(impl, request):
    ops = ops_for(impl, request)
    g = torch.Generator().manual_seed(5)
    # [B, N, H, d] layouts viewed as [B, H, N, d] (what a ViT's qkv split gives), a strided bias and mask
    q = torch.randn(2, 11, 3, 8, generator=g, dtype=torch.float64).transpose(1, 2)
    kv = torch.randn(2, 13, 2, 3, 8, generator=g, dtype=torch.float64)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    kb = torch.randn(13, 2, generator=g, dtype=torch.float64).t()
    km = (torch.rand(13, 2, generator=g) > 0.3).t()
    assert not q.is_contiguous() and not k.is_contiguous() and not kb.is_contiguous()
    check_forward(ops, q, k, v, kb, km, True)


# ---- backward ------------------------------------------------------------------------------------------------
def ref_grads(q, k, v, kb, km, causal, go, glse, cu=None, prefix=0):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, kb)]
    r = ref.attention(*leaves[:3], leaves[3], km, causal, None, True, cu_seqlens=cu, causal_prefix=prefix)
    lse = torch.where(torch.isfinite(r.lse), r.lse, torch.zeros_like(r.lse))
    loss = (r.out * go).sum() + (lse * glse).sum()
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("Nq,Nk,d,causal", [(7, 9, 8, False), (9, 7, 33, True), (23, 31, 16, True), (1, 1, 4, False)])
def test_backward_matches_reference(impl, request, Nq, Nk, d, causal):
    ops = ops_for(impl, request)
    q, k, v, kb, km = make(2, 2, Nq, Nk, d, torch.float64, bias=True, mask=True, seed=6)
    km[:, 0] = True
    out, lse, _, _ = ops.attention_forward(q, k, v, kb, km, causal)
    go = torch.randn_like(out)
    glse = torch.randn_like(lse)
    got = ops.attention_backward(go, glse, q, k, v, out, lse, kb, km, causal, None, None, True)
    want = ref_grads(q, k, v, kb, km, causal, go, torch.where(torch.isfinite(lse), glse, torch.zeros_like(glse)))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_cpu_backward_large_and_deterministic():
    q, k, v, kb, km = make(1, 2, 300, 600, 16, torch.float32, bias=True, mask=True, seed=7)
    ops = torch.ops.imtok_cuda
    out, lse, _, _ = ops.attention_forward(q, k, v, kb, km, True)
    go = torch.randn_like(out)
    got = ops.attention_backward(go, None, q, k, v, out, lse, kb, km, True, None, None, True)
    want = ref_grads(q.double(), k.double(), v.double(), kb.double(), km, True, go.double(), torch.zeros_like(lse).double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    nt = torch.get_num_threads()
    try:  # bitwise identical for every thread count and run (no atomics, fixed reduction order)
        torch.set_num_threads(1)
        again = ops.attention_backward(go, None, q, k, v, out, lse, kb, km, True, None, None, True)
        fwd1 = ops.attention_forward(q, k, v, kb, km, True, None, True, True)
    finally:
        torch.set_num_threads(nt)
    fwd2 = ops.attention_forward(q, k, v, kb, km, True, None, True, True)
    for a, b in zip(got, again):
        assert torch.equal(a, b)
    for a, b in zip(fwd1, fwd2):
        assert torch.equal(a, b)


# The CPU backward runs one pass per (segment, head) when there are at least 32 of them (S and dP computed once),
# else separate dq and dk/dv passes (more parallelism): the cases above use the second, these the first.
@pytest.mark.parametrize("Nq,Nk,d,causal", [(130, 520, 4, True), (520, 130, 4, True), (23, 29, 33, False), (1, 3, 4, False)])
def test_cpu_single_pass_backward_matches_reference(Nq, Nk, d, causal):
    q, k, v, kb, km = make(4, 8, Nq, Nk, d, torch.float64, bias=True, mask=True, seed=10)
    km[:, 0] = True
    ops = torch.ops.imtok_cuda
    out, lse, _, _ = ops.attention_forward(q, k, v, kb, km, causal)
    go = torch.randn_like(out)
    glse = torch.where(torch.isfinite(lse), torch.randn_like(lse), torch.zeros_like(lse))
    got = ops.attention_backward(go, glse, q, k, v, out, lse, kb, km, causal, None, None, True)
    want = ref_grads(q, k, v, kb, km, causal, go, glse)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    nt = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        again = ops.attention_backward(go, glse, q, k, v, out, lse, kb, km, causal, None, None, True)
    finally:
        torch.set_num_threads(nt)
    for a, b in zip(got, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_single_pass_backward_packed(causal):
    lens = [5, 0, 70, 1, 9]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
    T = int(cu[-1])
    q, k, v, kb, km = make(1, 8, T, T, 16, torch.float64, bias=True, mask=True, seed=11)
    ops = torch.ops.imtok_cuda
    out, lse, _, _ = ops.attention_forward(q, k, v, kb, km, causal, None, False, False, 0, -1, cu)
    go = torch.randn_like(out)
    got = ops.attention_backward(go, None, q, k, v, out, lse, kb, km, causal, None, cu, True)
    want = ref_grads(q, k, v, kb, km, causal, go, torch.zeros_like(lse), cu)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_float64(causal):
    q, k, v, kb, km = make(1, 2, 5, 6, 3, torch.float64, bias=True, mask=True, seed=8)
    km[:, -1] = True
    args = [t.requires_grad_(True) for t in (q, k, v, kb)]

    def f(q, k, v, kb):
        r = A.attention(q, k, v, kb, km, causal, None, return_lse=True)
        return r.out, torch.where(torch.isfinite(r.lse), r.lse, torch.zeros_like(r.lse))

    assert torch.autograd.gradcheck(f, args)


def test_autograd_through_wrapper_matches_reference():
    q, k, v, kb, km = make(2, 3, 10, 12, 8, torch.float32, bias=True, mask=True, seed=9)
    leaves = [t.requires_grad_(True) for t in (q, k, v, kb)]
    r = A.attention_with_side_outputs(*leaves, km, True)
    assert not r.cls_attn.requires_grad and not r.col_sum.requires_grad
    go = torch.randn_like(r.out)
    got = torch.autograd.grad((r.out * go).sum(), leaves)
    lse0 = torch.zeros_like(r.lse).double()
    want = ref_grads(q.double(), k.double(), v.double(), kb.double(), km, True, go.double(), lse0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 2), H=st.integers(1, 2), Nq=st.integers(0, 20), Nk=st.integers(0, 20), d=st.integers(1, 20),
       bias=st.booleans(), mask=st.booleans(), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_hypothesis_cpu_forward_backward(B, H, Nq, Nk, d, bias, mask, causal, seed):
    q, k, v, kb, km = make(B, H, Nq, Nk, d, torch.float64, bias, mask, seed=seed)
    ops = torch.ops.imtok_cuda
    out, lse, _, _ = check_forward(ops, q, k, v, kb, km, causal, cols=(seed % 5, None))
    go = torch.randn_like(out)
    glse = torch.where(torch.isfinite(lse), torch.randn_like(lse), torch.zeros_like(lse))
    got = ops.attention_backward(go, glse, q, k, v, out, lse, kb, km, causal, None, None, bias)
    if kb is None:
        kb = torch.zeros(B, Nk, dtype=torch.float64)
    want = ref_grads(q, k, v, kb, km, causal, go, glse)
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    if bias:
        torch.testing.assert_close(got[3], want[3], rtol=1e-10, atol=1e-10)


def test_bias_dtype_differs_from_q():
    """A float32 key bias (log token sizes) with bf16 q/k/v: its gradient comes back in float32."""
    q, k, v, _, km = make(2, 2, 8, 8, 16, torch.bfloat16, mask=True, seed=14)
    kb = torch.randn(2, 8, dtype=torch.float32, requires_grad=True)
    out = A.attention(q, k, v, kb, km)
    want = ref.attention(q, k, v, kb.detach(), km)
    torch.testing.assert_close(out.float(), want.float(), rtol=0, atol=2.0 ** -5)
    out.float().sum().backward()
    assert kb.grad.dtype == torch.float32 and torch.isfinite(kb.grad).all()


# ---- side-output hooks ------------------------------------------------------------------------------------------
def test_side_outputs_equal_eager_probabilities():
    q, k, v, kb, km = make(2, 4, 17, 17, 8, torch.float32, bias=True, mask=True, seed=10)
    r = A.attention_with_side_outputs(q, k, v, kb, km, col_sum_queries=(1, None))
    p = ref.attention_probs(q, k, kb, km)
    torch.testing.assert_close(r.cls_attn, p[:, :, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.cls_attn_mean, p[:, :, 0].mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.col_sum, p[:, :, 1:].sum(2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r.col_sum_mean, p[:, :, 1:].sum(2).mean(1), rtol=1e-5, atol=1e-5)
    assert A.attention(q, k, v).shape == q.shape  # no side output requested: a plain tensor
    only_lse = A.attention(q, k, v, return_lse=True)
    assert only_lse.cls_attn is None and only_lse.col_sum is None and only_lse.lse.shape == (2, 4, 17)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cls_attention_hook(dtype):
    q, k, v, kb, km = make(2, 3, 9, 14, 16, dtype, bias=True, mask=True, seed=11)
    km[1] = False
    got = A.cls_attention(q, k, kb, km)
    want = ref.cls_attention(q, k, kb, km)
    torch.testing.assert_close(got, want)
    full = A.attention(q, k, v, kb, km, return_cls_attn=True)
    torch.testing.assert_close(got, full.cls_attn, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[1], torch.zeros_like(got[1]))


# ---- registration: opcheck, compile ----------------------------------------------------------------------------
def test_opcheck():
    q, k, v, kb, km = make(2, 2, 6, 7, 8, torch.float64, bias=True, mask=True, seed=12)
    km[:, 0] = True
    for t in (q, k, v, kb):
        t.requires_grad_(True)
    torch.library.opcheck(torch.ops.imtok_cuda.attention_forward.default, (q, k, v, kb, km, True, 0.5, True, True, 1, 4, None))
    torch.library.opcheck(torch.ops.imtok_cuda.attention_forward.default, (q, k, v), {"causal": False})
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    q1, k1, v1 = (t.detach()[:1, :, :7].contiguous() for t in (k, v, k))
    torch.library.opcheck(torch.ops.imtok_cuda.attention_forward.default, (q1, k1, v1), {"cu_seqlens": cu})
    with torch.no_grad():
        out, lse, _, _ = torch.ops.imtok_cuda.attention_forward(q, k, v, kb, km, True)
    go = torch.randn_like(out)
    torch.library.opcheck(torch.ops.imtok_cuda.attention_backward.default,
                          (go, None, q.detach(), k.detach(), v.detach(), out, lse, kb.detach(), km, True, None, None, True))


def test_torch_compile_fullgraph():
    q, k, v, kb, km = make(2, 2, 9, 9, 8, torch.float32, bias=True, mask=True, seed=13)
    leaves = [t.requires_grad_(True) for t in (q, k, v, kb)]

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(q, k, v, kb):
        r = A.attention_with_side_outputs(q, k, v, kb, km, causal=True)
        return r.out.sum() + r.lse.clamp_min(-1e4).sum(), r.cls_attn_mean, r.col_sum_mean

    loss, cls_m, col_m = f(*leaves)
    loss.backward()
    r = A.attention_with_side_outputs(*(t.detach() for t in leaves), km, causal=True)
    torch.testing.assert_close(cls_m, r.cls_attn_mean)
    torch.testing.assert_close(col_m, r.col_sum_mean)
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)


# ---- bad input -----------------------------------------------------------------------------------------------------
def test_bad_input_messages():
    q, k, v, kb, km = make(2, 2, 4, 5, 8, torch.float32, bias=True, mask=True)
    F = torch.ops.imtok_cuda.attention_forward
    with pytest.raises(ValueError, match="q must have 4"):
        A.attention(q[0], k, v)
    with pytest.raises(ValueError, match="q must have 4"):
        F(q[0], k, v)
    with pytest.raises(TypeError, match="same dtype"):
        A.attention(q, k.double(), v)
    with pytest.raises(TypeError, match="same dtype"):
        F(q, k.double(), v)
    with pytest.raises(TypeError, match="q must be float"):
        F(q.int(), k.int(), v.int())
    with pytest.raises(ValueError, match="v must have the shape"):
        A.attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match=r"v.shape\[2\]"):
        F(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match="head dim"):
        A.attention(*(torch.randn(1, 1, 2, 129) for _ in range(3)))
    with pytest.raises(ValueError, match="head dim"):
        F(*(torch.randn(1, 1, 2, 129) for _ in range(3)))
    with pytest.raises(TypeError, match="key_mask must be a bool"):
        A.attention(q, k, v, key_mask=km.float())
    with pytest.raises(TypeError, match="key_mask must be Bool"):
        F(q, k, v, None, km.float())
    with pytest.raises(ValueError, match="key_bias must have shape"):
        A.attention(q, k, v, key_bias=kb[:, :4])
    with pytest.raises(ValueError, match=r"key_bias.shape\[1\]"):
        F(q, k, v, kb[:, :4])
    with pytest.raises(ValueError, match="scale must be finite"):
        F(q, k, v, None, None, False, float("nan"))
    with pytest.raises(ValueError, match="col_sum_queries"):
        A.attention(q, k, v, return_col_sum=True, col_sum_queries=(-1, 3))
    with pytest.raises(ValueError, match="col_sum_start"):
        F(q, k, v, None, None, False, None, False, True, -2, 3)
    # packed sequences
    qp, kp, vp = (torch.randn(1, 2, 6, 8) for _ in range(3))
    with pytest.raises(TypeError, match="cu_seqlens must be a 1-D int32"):
        A.attention(qp, kp, vp, cu_seqlens=torch.tensor([0, 6]))
    with pytest.raises(TypeError, match="cu_seqlens must be Int"):
        F(qp, kp, vp, cu_seqlens=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="non-decreasing"):
        A.attention(qp, kp, vp, cu_seqlens=torch.tensor([0, 4, 2, 6], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\]"):
        A.attention(qp, kp, vp, cu_seqlens=torch.tensor([0, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens\[0\]"):
        A.attention(qp, kp, vp, cu_seqlens=torch.tensor([1, 6], dtype=torch.int32))
    with pytest.raises(ValueError, match="packed"):
        A.attention(q, k, v, cu_seqlens=torch.tensor([0, 4], dtype=torch.int32))
    # backward op
    out, lse, _, _ = F(q, k, v)
    B = torch.ops.imtok_cuda.attention_backward
    with pytest.raises(ValueError, match=r"grad_out.shape\[2\]"):
        B(out[:, :, :3], None, q, k, v, out, lse)
    with pytest.raises(ValueError, match=r"lse.shape\[2\]"):
        B(out, None, q, k, v, out, lse[:, :, :3])
    with pytest.raises(ValueError, match="need_bias_grad requires key_bias"):
        B(out, None, q, k, v, out, lse, None, None, False, None, None, True)


def test_emulated_bad_input(emu):
    q, k, v, kb, km = make(1, 1, 3, 4, 8, torch.float32)
    with pytest.raises(ValueError, match="head dim"):
        emu.attention_forward(*(torch.randn(1, 1, 2, 129) for _ in range(3)))
    with pytest.raises(TypeError, match="key_mask must be Bool"):
        emu.attention_forward(q, k, v, None, torch.ones(1, 4))
    with pytest.raises(ValueError, match="non-decreasing"):
        emu.attention_forward(q, q, q, cu_seqlens=torch.tensor([0, 2, 1, 3], dtype=torch.int32))


# ---- causal_prefix: the prefix-LM mask (FlexTok's causal_last) -------------------------------------------------
def prefix_lm_keep(nq, nk, prefix):
    """The dense boolean mask: query i sees key j iff j <= i + (nk - nq) or j < prefix."""
    i, j = torch.arange(nq)[:, None], torch.arange(nk)[None, :]
    return (j <= i + (nk - nq)) | (j < prefix)


# (Nq, Nk, d, bias, mask, prefix): FlexTok's square case, the prefix inside a 64-query block and across blocks,
# Nq > Nk (queries that plain causal leaves empty see the prefix), Nq < Nk (decoding after a prefix), prefix 0
# (plain causal) and prefix >= Nk (no mask)
PREFIX_CASES = [
    (17, 17, 8, False, False, 12),
    (13, 13, 8, True, True, 5),
    (7, 5, 16, False, True, 3),
    (5, 9, 33, True, False, 7),
    (9, 9, 4, True, True, 0),
    (6, 6, 8, False, False, 20),
    (130, 130, 16, True, True, 70),
]


def test_reference_prefix_is_the_dense_boolean_mask():
    """The reference against SDPA given the mask explicitly (an independent statement of the same mask)."""
    q, k, v, _, _ = make(2, 3, 21, 21, 8, seed=20)
    for P in (0, 1, 9, 21, 40):
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=prefix_lm_keep(21, 21, P))
        torch.testing.assert_close(ref.attention(q, k, v, causal=True, causal_prefix=P), want)
    q, k, v, _, _ = make(1, 2, 6, 15, 8, seed=21)  # fewer queries than keys
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=prefix_lm_keep(6, 15, 4))
    torch.testing.assert_close(ref.attention(q, k, v, causal=True, causal_prefix=4), want)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("Nq,Nk,d,bias,mask,prefix", PREFIX_CASES)
def test_causal_prefix_matches_reference(impl, request, dtype, Nq, Nk, d, bias, mask, prefix):
    if impl == "emulated" and Nq > 64:
        pytest.skip("the SIMT tiles (16 x 32) are crossed by the smaller cases; 130 is for the CPU's 64-row blocks")
    ops = ops_for(impl, request)
    q, k, v, kb, km = make(2, 2, Nq, Nk, d, dtype, bias, mask, seed=22)
    if km is not None:
        km[:, 0] = True
    out, lse, _, _ = check_forward(ops, q, k, v, kb, km, True, cols=(2, None), prefix=prefix)
    go = torch.randn_like(out)
    glse = torch.where(torch.isfinite(lse), torch.randn_like(lse), torch.zeros_like(lse))
    got = ops.attention_backward(go, glse, q, k, v, out, lse, kb, km, True, None, None, bias, prefix)
    if kb is None:
        kb = torch.zeros(2, Nk, dtype=dtype)
    want = ref_grads(q, k, v, kb, km, True, go, glse, prefix=prefix)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    if bias:
        torch.testing.assert_close(got[3], want[3], rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_causal_prefix_edges_are_causal_and_unmasked(impl, request):
    """prefix 0 is plain causal and prefix >= Nk no mask at all: the same numbers, bit for bit."""
    ops = ops_for(impl, request)
    q, k, v, kb, km = make(2, 2, 40, 40, 8, torch.float32, bias=True, mask=True, seed=23)
    for prefix, causal in ((0, True), (40, False), (500, False)):
        got = ops.attention_forward(q, k, v, kb, km, True, None, True, True, 0, -1, None, prefix)
        want = ops.attention_forward(q, k, v, kb, km, causal, None, True, True)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        go = torch.randn_like(got[0])
        gb = ops.attention_backward(go, None, q, k, v, got[0], got[1], kb, km, True, None, None, True, prefix)
        wb = ops.attention_backward(go, None, q, k, v, want[0], want[1], kb, km, causal, None, None, True)
        for a, b in zip(gb, wb):
            assert torch.equal(a, b)


def test_cpu_causal_prefix_every_path():
    """The CPU paths the cases above do not reach: >= 32 (batch, head) items (forward with fused side outputs,
    one-pass backward), keys beyond one online-softmax chunk (Nk > 1024), and the separate CLS / column-sum
    kernels."""
    ops = torch.ops.imtok_cuda
    q, k, v, kb, km = make(4, 8, 130, 130, 8, torch.float64, bias=True, mask=True, seed=24)
    km[:, 0] = True
    out, lse, _, _ = check_forward(ops, q, k, v, kb, km, True, cols=(3, 100), prefix=70)
    go = torch.randn_like(out)
    got = ops.attention_backward(go, None, q, k, v, out, lse, kb, km, True, None, None, True, 70)
    want = ref_grads(q, k, v, kb, km, True, go, torch.zeros_like(lse), prefix=70)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    q, k, v, kb, km = make(1, 2, 1100, 1100, 8, torch.float32, bias=True, mask=True, seed=25)
    check_forward(ops, q, k, v, kb, km, True, cols=(3, 900), tol=5e-5, prefix=600)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("Nq,Nk,d,prefix", [(130, 130, 64, 70), (70, 40, 33, 20), (40, 200, 128, 150)])
def test_tensor_core_causal_prefix(emu, dtype, Nq, Nk, d, prefix):
    """The tensor-core forward, column sums and backward with a prefix, against the reference / the fp64
    explicit backward with the same element-wise bounds as without one."""
    q, k, v, kb, km = make(1, 2, Nq, Nk, d, dtype, bias=True, mask=True, seed=27)
    km[:, 0] = True
    out, lse, cls, col = emu.attention_forward(q, k, v, kb, km, True, None, True, True, 0, -1, None, prefix)
    r = ref.attention(q, k, v, kb, km, True, None, True, True, True, causal_prefix=prefix)
    torch.testing.assert_close(out.float(), r.out.float(), rtol=0, atol=tensor_core_atol(v, dtype))
    assert_same_inf(lse, r.lse)
    fin = torch.isfinite(r.lse)
    torch.testing.assert_close(lse[fin], r.lse[fin], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls, r.cls_attn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(col, r.col_sum, rtol=1e-5, atol=1e-4)
    go = torch.randn(q.shape, generator=torch.Generator().manual_seed(28)).to(dtype)
    got = emu.attention_backward(go, None, q, k, v, out, lse, kb, km, True, None, None, True, prefix)
    assert_half_backward_within_bounds(got, q, k, v, kb, km, True, out, lse, go, prefix)
    s_out = emu.attention_forward_simt(q, k, v, kb, km, True, None, False, False, 0, -1, None, prefix)[0]
    torch.testing.assert_close(out.float(), s_out.float(), rtol=0, atol=2 * tensor_core_atol(v, dtype))


def test_causal_prefix_gradcheck_opcheck_compile():
    q, k, v, kb, km = make(1, 2, 7, 7, 3, torch.float64, bias=True, mask=True, seed=29)
    km[:, -1] = True
    args = [t.requires_grad_(True) for t in (q, k, v, kb)]

    def f(q, k, v, kb):
        r = A.attention(q, k, v, kb, km, True, None, return_lse=True, causal_prefix=4)
        return r.out, torch.where(torch.isfinite(r.lse), r.lse, torch.zeros_like(r.lse))

    assert torch.autograd.gradcheck(f, args)
    torch.library.opcheck(torch.ops.imtok_cuda.attention_forward.default, (q, k, v, kb, km, True), {"causal_prefix": 4})
    with torch.no_grad():
        out, lse, _, _ = torch.ops.imtok_cuda.attention_forward(q, k, v, kb, km, True, causal_prefix=4)
    torch.library.opcheck(torch.ops.imtok_cuda.attention_backward.default,
                          (torch.randn_like(out), None, q.detach(), k.detach(), v.detach(), out, lse, kb.detach(), km,
                           True, None, None, True, 4))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def g(q, k, v, kb):
        return A.attention(q, k, v, kb, km, causal=True, causal_prefix=4).sum()

    g(*args).backward()
    want = torch.autograd.grad(A.attention(*args, km, causal=True, causal_prefix=4).sum(), args)
    for t, w in zip(args, want):
        torch.testing.assert_close(t.grad, w)


# ---- real GPU ---------------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("Nq,Nk,d,bias,mask,causal", CASES + [
    (197, 197, 64, True, True, False), (300, 577, 128, False, True, True),
    (512, 512, 64, False, True, 256)])  # an int: causal with that causal_prefix (FlexTok's encoder shape)
def test_cuda_matches_reference(dtype, Nq, Nk, d, bias, mask, causal):
    q, k, v, kb, km = make(2, 3, Nq, Nk, d, dtype, bias, mask, device="cuda")
    ops = torch.ops.imtok_cuda
    prefix = 0 if isinstance(causal, bool) else causal
    causal = bool(causal)
    out, lse, cls, col = ops.attention_forward(q, k, v, kb, km, causal, None, True, True, 0, -1, None, prefix)
    r = ref.attention(q, k, v, kb, km, causal, None, True, True, True, causal_prefix=prefix)
    if dtype in (torch.float16, torch.bfloat16):  # tensor cores (sm_80+)
        torch.testing.assert_close(out.float(), r.out.float(), rtol=0, atol=tensor_core_atol(v, dtype))
    else:
        tol = {torch.float64: 1e-10, torch.float32: 1e-4}[dtype]
        torch.testing.assert_close(out, r.out, rtol=tol, atol=tol)
    torch.testing.assert_close(cls, r.cls_attn, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(col, r.col_sum, rtol=1e-4, atol=1e-3)
    if dtype in (torch.float16, torch.bfloat16) and Nq > 0 and Nk > 0:  # tensor-core backward (sm_80+)
        go = torch.randn_like(out)
        got = ops.attention_backward(go, None, q, k, v, out, lse, kb, km, causal, None, None, kb is not None, prefix)
        assert_half_backward_within_bounds(got, q, k, v, kb, km, causal, out, lse, go, prefix)
    if dtype in (torch.float32, torch.float64) and Nq > 0 and Nk > 0:
        go = torch.randn_like(out)
        got = ops.attention_backward(go, None, q, k, v, out, lse, kb, km, causal, None, None, kb is not None, prefix)
        cpu = torch.ops.imtok_cuda.attention_backward(
            go.cpu(), None, q.cpu(), k.cpu(), v.cpu(), out.cpu(), lse.cpu(), None if kb is None else kb.cpu(),
            None if km is None else km.cpu(), causal, None, None, kb is not None, prefix)
        for a, b in zip(got, cpu):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-4)
