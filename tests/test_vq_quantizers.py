"""vq quantizers: FSQ, LFQ/BSQ + entropy loss, binary, counts, EMA (incl. 2-process gloo), quantize, RVQ and the
nn modules. Reference (imtok_cuda.reference.vq_quantizers) vs CPU kernel vs emulated CUDA kernel."""
import ctypes
import ctypes.util
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from imtok_cuda import vq
from imtok_cuda.reference import vq_quantizers as R

OPS = torch.ops.imtok_cuda
HAS_GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LEVELS = [[8, 8, 8, 5, 5, 5], [7, 5, 3], [8, 6, 5], [2, 2, 2, 2], [3], [16, 16], [4] * 15]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _fsq_input(n, levels, dtype=torch.float32, scale=2.0):
    return (torch.randn(n, len(levels)) * scale).to(dtype)


# ================================================= FSQ =================================================


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fsq_cpu_matches_anchor_exactly(levels, dtype):
    z = _fsq_input(4099, levels, dtype)
    codes, idx = vq.fsq(z, levels)
    ac, ai = R.anchor_fsq(z, levels)
    assert codes.dtype == dtype and idx.dtype == torch.int32
    assert torch.equal(codes, ac)
    assert torch.equal(idx, R.fsq(z, levels)[1])
    if dtype == torch.float64 or vq.fsq_codebook_size(levels) <= 2**24:
        assert torch.equal(idx, ai)
    else:
        # the anchor sums the index in fp32: above 2^24 codes it returns wrong (rounded) indices
        assert not torch.equal(idx, ai)
        assert torch.equal(vq.fsq_indices_to_codes(idx, levels), codes)


@pytest.mark.parametrize("levels", LEVELS[:4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 37, 300])
def test_fsq_emulated_matches_reference(emu, levels, dtype, n):
    z = _fsq_input(n, levels, dtype)
    rc, ri = R.fsq(z, levels)
    ec, ei = emu.vq_fsq(z, levels)
    cc, ci = OPS.vq_fsq(z, levels)
    assert torch.equal(ec, rc) and torch.equal(ei, ri)
    assert torch.equal(cc, ec) and torch.equal(ci, ei)


def test_fsq_bf16_input_keeps_all_codes():
    levels = [8, 8, 8, 5, 5, 5]
    size = vq.fsq_codebook_size(levels)
    # one input per code: the pre-image of each code's centre, in bf16
    centres = vq.fsq_indices_to_codes(torch.arange(size), levels)  # [size, d] in [-1, 1]
    lv = torch.tensor(levels, dtype=torch.float32)
    half_l = (lv - 1) * (1 + 1e-3) / 2
    offset = (lv % 2 == 0).float() * 0.5
    shift = torch.atanh(offset / half_l)
    z = (torch.atanh((centres * (lv // 2) + offset) / half_l) - shift).to(torch.bfloat16)
    codes, idx = vq.fsq(z, levels)
    assert codes.dtype == torch.float32
    assert torch.unique(idx).numel() == size
    assert torch.equal(idx, torch.arange(size, dtype=torch.int32))
    # random bf16 inputs: exactly the fp32 result of the upcast input
    zr = (torch.randn(3000, 6) * 2).bfloat16()
    assert torch.equal(vq.fsq(zr, levels)[1], R.anchor_fsq(zr.float(), levels)[1])


@pytest.mark.parametrize("levels", [[8, 8, 8, 5, 5, 5], [7, 5, 3], [5, 4]])
def test_fsq_indices_round_trip(levels, emu):
    size = vq.fsq_codebook_size(levels)
    all_idx = torch.arange(size)
    codes = vq.fsq_indices_to_codes(all_idx, levels)
    assert torch.equal(codes, R.anchor_fsq_indices_to_codes(all_idx, levels).float())
    assert torch.equal(emu.vq_fsq_indices_to_codes(all_idx[:300].int(), levels), codes[:300])
    # codes are fixed points of the quantizer's index map: codes -> (bound^-1) -> fsq -> same index
    z = torch.randn(5000, len(levels)) * 3
    c, i = vq.fsq(z, levels)
    assert torch.equal(vq.fsq_indices_to_codes(i, levels), c)
    assert torch.equal(vq.fsq_indices_to_codes(i.long(), levels), c)


def test_fsq_non_contiguous_and_batched_shapes():
    levels = [8, 5, 5, 5]
    z = torch.randn(3, 4, 7, 9)[..., :4]  # non-contiguous [3, 4, 7, 4]
    assert not z.is_contiguous()
    c, i = vq.fsq(z, levels)
    rc, ri = R.fsq(z.contiguous(), levels)
    assert c.shape == (3, 4, 7, 4) and i.shape == (3, 4, 7)
    assert torch.equal(c, rc) and torch.equal(i, ri)
    zt = torch.randn(4, 50).t()  # [50, 4] non-contiguous
    assert torch.equal(vq.fsq(zt, levels)[1], R.fsq(zt.contiguous(), levels)[1])


def test_fsq_nan_and_inf():
    levels = [8, 5]
    z = torch.tensor([[float("nan"), 0.0], [float("inf"), float("-inf")], [0.0, 0.0]])
    c, i = vq.fsq(z, levels)
    assert i[0].item() == -1 and torch.isnan(c[0, 0])
    ac, ai = R.anchor_fsq(z[1:], levels)
    assert torch.equal(c[1:], ac) and torch.equal(i[1:], ai)


# torch's CPU tanh is MKL VML in its x86 builds and its tanh backward computes 1 - y^2 with one rounding (FMA) on
# AVX2 / AVX-512: the CPU kernel does the same (quantizers_cpu_vec.h), so there its codes and gradients are the
# anchor's bit for bit.
TORCH_TANH_IS_VML = torch.backends.mkl.is_available() and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fsq_backward_matches_anchor(dtype):
    levels = [8, 8, 8, 5, 5, 5]
    z = _fsq_input(513, levels, dtype, 1.5)
    g = torch.randn(513, 6)
    za = z.detach().clone().requires_grad_()
    R.anchor_fsq(za, levels)[0].backward(g.to(R.anchor_fsq(za.detach(), levels)[0].dtype))
    zk = z.detach().clone().requires_grad_()
    vq.fsq(zk, levels)[0].backward(g)
    assert zk.grad.dtype == dtype
    if TORCH_TANH_IS_VML:
        assert torch.equal(zk.grad, za.grad)
    elif dtype == torch.float32:
        # d codes / dz = g * (1 - y^2) * half_l / (L // 2) with y = tanh(z + shift). Without MKL the kernel's y is
        # std::tanh, the anchor's torch's vectorized tanh (Sleef): each within about one ulp, so where y is close to
        # +-1 the two (1 - y^2) differ by up to 2 |y| 2 ulp(y) ~ 2^-22 absolute. Element-wise bound: that term
        # times the other factors, plus a few fp32 roundings of the product.
        lv = torch.tensor(levels, dtype=torch.float32)
        factor = (lv - 1) * (1 + 1e-3) / 2 / (lv // 2)
        bound = g.abs() * factor * 2.0**-22 + za.grad.abs() * 4 * 2.0**-24
        assert ((zk.grad - za.grad).abs() <= bound).all(), (zk.grad - za.grad).abs().max()
    else:
        torch.testing.assert_close(zk.grad.float(), za.grad.float(), rtol=1e-2, atol=1e-3)


def _libm_fsq_grad(g, z, levels):
    """The device kernels' gradient expression evaluated with the C library's float math, as the emulated
    kernels run it: shift = atanhf(offset / half_l), t = tanhf(z + shift), ((g / (L//2)) * half_l) * (1 - t * t),
    every operation rounded to fp32."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    for name in ("tanhf", "atanhf"):
        getattr(libm, name).restype = ctypes.c_float
        getattr(libm, name).argtypes = [ctypes.c_float]
    lv = torch.tensor(levels, dtype=torch.float32)
    half_l = (lv - 1) * (1 + 1e-3) / 2
    offset = (lv % 2 == 0).float() * 0.5
    shift = torch.tensor([libm.atanhf(v) for v in (offset / half_l).tolist()], dtype=torch.float32)
    x = z.float() + shift
    t = torch.tensor([libm.tanhf(v) for v in x.flatten().tolist()], dtype=torch.float32).view(x.shape)
    return (((g / (lv // 2)) * half_l) * (1 - t * t)).to(z.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fsq_backward_emulated(dtype, emu):
    levels = [8, 8, 8, 5, 5, 5]
    z = _fsq_input(513, levels, dtype, 1.5)
    g = torch.randn(513, 6)
    assert torch.equal(emu.vq_fsq_backward(g, z, levels), _libm_fsq_grad(g, z, levels))


def test_fsq_gradcheck():
    z = (torch.randn(23, 3, dtype=torch.float64) * 1.5).requires_grad_()
    # codes are piecewise constant, so the straight-through derivative is checked against the smooth
    # function it stands for (bound / (L//2)), itself gradchecked by finite differences
    lv = torch.tensor([7.0, 5.0, 4.0], dtype=torch.float64)
    half_l = ((lv - 1).float() * 1.001 / 2).double()

    def smooth(t):
        offset = (lv % 2 == 0).double() * 0.5
        shift = torch.atanh(offset.float() / half_l.float()).double()
        return ((t + shift).tanh() * half_l - offset) / (lv // 2)

    zz = z.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(smooth, (zz,))
    g = torch.randn(23, 3, dtype=torch.float64)
    (gz,) = torch.autograd.grad(vq.fsq(z, [7, 5, 4])[0], z, g)
    (gs,) = torch.autograd.grad(smooth(zz), zz, g)
    torch.testing.assert_close(gz, gs, rtol=1e-6, atol=1e-7)


def test_fsq_opcheck():
    z = torch.randn(17, 4, requires_grad=True)
    torch.library.opcheck(OPS.vq_fsq.default, (z, [8, 5, 5, 5]))
    torch.library.opcheck(OPS.vq_fsq_backward.default, (torch.randn(17, 4), z.detach(), [8, 5, 5, 5]))
    torch.library.opcheck(OPS.vq_fsq_indices_to_codes.default, (torch.randint(0, 1000, (9,)), [8, 5, 5, 5]))


def test_fsq_torch_compile():
    levels = [8, 5, 5, 5]

    def f(z):
        c, i = vq.fsq(z, levels)
        return (c * 2).sum(), i

    z = torch.randn(64, 4, requires_grad=True)
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    out, i = cf(z)
    out.backward()
    z2 = z.detach().clone().requires_grad_()
    ref, ri = f(z2)
    ref.backward()
    assert torch.equal(i, ri)
    torch.testing.assert_close(z.grad, z2.grad)


def test_fsq_bad_input():
    with pytest.raises(ValueError, match="z.shape"):
        vq.fsq(torch.randn(4, 3), [8, 5])
    with pytest.raises(ValueError, match=r"levels\[1\]"):
        vq.fsq(torch.randn(4, 2), [8, 1])
    with pytest.raises(TypeError, match="z must be"):
        vq.fsq(torch.ones(4, 2, dtype=torch.int64), [8, 5])
    with pytest.raises(ValueError, match="z.shape"):
        OPS.vq_fsq(torch.randn(4, 3), [8, 5])
    with pytest.raises(ValueError, match=r"levels\[0\]"):
        OPS.vq_fsq(torch.randn(4, 1), [0])
    with pytest.raises(ValueError, match="int32"):
        OPS.vq_fsq(torch.randn(4, 9), [16] * 9)
    with pytest.raises(ValueError, match="indices"):
        vq.fsq_indices_to_codes(torch.tensor([0, 40]), [8, 5])
    with pytest.raises(TypeError, match="indices"):
        vq.fsq_indices_to_codes(torch.tensor([0.0]), [8, 5])


def test_fsq_bad_input_emulated(emu):
    with pytest.raises(ValueError, match="z.shape"):
        emu.vq_fsq(torch.randn(4, 3), [8, 5])
    with pytest.raises(ValueError, match="indices"):
        emu.vq_fsq_indices_to_codes(torch.tensor([-1]), [8, 5])


# ================================================ LFQ / BSQ ================================================


@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lfq_matches_reference(spherical, dtype, emu):
    x = torch.randn(301, 10).to(dtype)
    x[0, :3] = 0.0
    q, idx, xu = vq.lfq_quantize(x, scale=1.5, spherical=spherical)
    rq, ridx, rxu = R.lfq(x, scale=1.5, spherical=spherical)
    assert idx.dtype == torch.int64
    assert torch.equal(idx, ridx)
    assert torch.equal(q, rq)
    v = R.lfq_value(10, 1.5, spherical)
    eq, eidx = emu.vq_lfq(xu, v)
    cq, cidx = OPS.vq_lfq(xu, v)
    assert torch.equal(eidx, ridx) and torch.equal(cidx, ridx)
    assert torch.equal(eq, cq) and torch.equal(cq, torch.where(xu > 0, v, -v).float())


def test_lfq_index_bits_msb_first_and_zero_is_negative():
    x = torch.tensor([[1.0, -1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [-0.0, 3.0, 3.0, 3.0]])
    q, idx, _ = vq.lfq_quantize(x)
    assert idx.tolist() == [0b1001, 0, 0b0111]
    assert q[1].tolist() == [-1.0] * 4


def test_lfq_straight_through_grad_and_opcheck():
    x = torch.randn(20, 6, requires_grad=True)
    q, _, _ = vq.lfq_quantize(x)
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    torch.library.opcheck(OPS.vq_lfq.default, (torch.randn(11, 5), 0.5))


def test_lfq_bad_input():
    with pytest.raises(ValueError, match="x.shape"):
        vq.lfq_quantize(torch.randn(3, 63))
    with pytest.raises(ValueError, match="x.shape"):
        OPS.vq_lfq(torch.randn(3, 63), 1.0)
    with pytest.raises(TypeError, match="x must be"):
        OPS.vq_lfq(torch.ones(3, 4, dtype=torch.int32), 1.0)


@pytest.mark.parametrize("d,temp,scale,spherical,n", [(6, 100.0, 1.0, False, 777), (8, 100.0, 0.05, False, 777),
                                                      (10, 1.0, 1.0, False, 777), (9, 100.0, 1.0, True, 777),
                                                      (12, 30.0, 0.02, False, 777), (1, 100.0, 1.0, False, 50),
                                                      (17, 100.0, 0.001, False, 48)])
def test_lfq_entropy_matches_materializing_anchor(d, temp, scale, spherical, n):
    x = torch.randn(n, d) * scale
    _, _, xu = R.lfq(x, 1.0, spherical)
    v = R.lfq_value(d, 1.0, spherical)
    ps, cb = R.anchor_lfq_entropy(xu, temp, 1.0, spherical)
    ps2, cb2 = vq.lfq_entropy(xu, temp, v, tile=100)
    torch.testing.assert_close(cb2, cb, rtol=1e-5, atol=1e-5)  # same clamp: same value
    torch.testing.assert_close(ps2, ps, rtol=1e-5, atol=1e-5)
    # clamp=False: the exact entropy = sum of per-bit entropies = the materialized product distribution's
    fps, fcb = R.lfq_entropy_factorized(xu, temp, v)
    torch.testing.assert_close(vq.lfq_per_sample_entropy(xu, temp, v, clamp=False), fps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cb2, fcb, rtol=1e-5, atol=1e-5)
    if d == 17:  # every p < 1e-5 here: the anchor's clamped value is far from the entropy
        assert fps - ps > 0.1
    # gradients of both terms
    for term in (0, 1):
        xa = xu.detach().clone().requires_grad_()
        xb = xu.detach().clone().requires_grad_()
        R.anchor_lfq_entropy(xa, temp, 1.0, spherical)[term].backward()
        vq.lfq_entropy(xb, temp, v, tile=64)[term].backward()
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-3, atol=1e-4 * xa.grad.abs().max().item() + 1e-7)


def test_lfq_entropy_tile_independent_and_gradcheck():
    x = torch.randn(100, 7) * 0.1
    a = vq.lfq_codebook_entropy(x, 10.0, tile=7)
    b = vq.lfq_codebook_entropy(x, 10.0, tile=1000)
    torch.testing.assert_close(a, b)
    xd = (torch.randn(9, 5, dtype=torch.float64) * 0.2).requires_grad_()
    # fp32 inside: compare the custom backward with finite differences at a loose tolerance
    assert torch.autograd.gradcheck(lambda t: vq.lfq_codebook_entropy(t, 1.0, tile=4).double(), (xd,),
                                    eps=1e-3, atol=2e-3, rtol=2e-2)


def test_lfq_entropy_bad_input():
    with pytest.raises(ValueError, match="x.shape"):
        vq.lfq_codebook_entropy(torch.randn(3, 25))
    with pytest.raises(ValueError, match="x.shape"):
        vq.lfq_per_sample_entropy(torch.randn(3, 41))
    with pytest.raises(TypeError, match="x must be"):
        vq.lfq_per_sample_entropy(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="tile"):
        vq.lfq_codebook_entropy(torch.randn(3, 4), tile=0)


# ================================================= binary ==================================================


def test_binary_eval_uses_sigmoid_in_input_dtype():
    z = torch.tensor([1e-3, -1e-3, 2.0, -2.0, 0.0], dtype=torch.bfloat16)
    _, bits, loss = vq.binary_quantize(z[None])
    assert bits.dtype == torch.bfloat16
    assert bits[0].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]  # sigmoid(1e-3) rounds to 0.5 in bf16
    assert (z > 0).float().tolist()[0] == 1.0  # which z > 0 would have called 1
    assert loss.item() == 0.0
    emb = torch.randn(5, 3, dtype=torch.bfloat16)
    out, b2, _ = vq.binary_quantize(z[None], emb)
    assert torch.equal(out, b2 @ emb)
    ro, rb, _ = R.binary_quantize(z[None], emb)
    assert torch.equal(ro, out)


def test_binary_train_straight_through():
    z = torch.randn(64, 8, requires_grad=True)
    g = torch.Generator().manual_seed(3)
    out, bits, loss = vq.binary_quantize(z, training=True, temperature=0.5, generator=g)
    assert set(bits.detach().unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(z.detach() / 0.5)
    torch.testing.assert_close(loss, (p * (1 - p)).mean())
    bits.sum().backward()
    torch.testing.assert_close(z.grad, p * (1 - p) / 0.5)
    with pytest.raises(ValueError, match="temperature"):
        vq.binary_quantize(z, training=True, temperature=0.0)
    with pytest.raises(ValueError, match="embedding"):
        vq.binary_quantize(z, torch.randn(7, 3))


# ============================================= counts and EMA =============================================


@pytest.mark.parametrize("itype", [torch.int64, torch.int32])
@pytest.mark.parametrize("n,k", [(0, 5), (1, 1), (1000, 37), (513, 4096)])
def test_code_counts(itype, n, k, emu):
    idx = torch.randint(0, k, (n,), dtype=itype)
    ref = R.code_counts(idx, k)
    assert torch.equal(vq.code_counts(idx, k), ref)
    assert torch.equal(emu.vq_code_counts(idx, k), ref)
    assert torch.equal(vq.code_counts(idx.reshape(-1, 1) if n else idx, k), ref)


def test_perplexity():
    counts = torch.tensor([5, 5, 0, 5, 5])
    torch.testing.assert_close(vq.perplexity(counts), torch.tensor(4.0))
    torch.testing.assert_close(vq.perplexity(counts), R.perplexity(counts))
    assert vq.perplexity(torch.zeros(3, dtype=torch.long)).item() == 1.0


def test_counts_bad_input(emu):
    for ops in (OPS, emu):
        with pytest.raises(ValueError, match="indices must be in"):
            ops.vq_code_counts(torch.tensor([0, 5]), 5)
        with pytest.raises(ValueError, match="indices must be in"):
            ops.vq_code_counts(torch.tensor([-1]), 5)
        with pytest.raises(TypeError, match="indices"):
            ops.vq_code_counts(torch.tensor([0.0]), 5)
        with pytest.raises(ValueError, match="K"):
            ops.vq_code_counts(torch.tensor([0]), 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,d", [(0, 4, 3), (1, 1, 1), (200, 7, 8), (333, 64, 5)])
def test_ema_stats_reference_cpu_emulated(dtype, n, k, d, emu):
    x = torch.randn(n, d).to(dtype)
    idx = torch.randint(0, k, (n,))
    if n > 10:
        idx[: n // 3] = 2  # a heavy code spanning several chunks of the device kernel
    counts, sums = vq.ema_stats(x, idx, k)
    rc, rs = R.ema_stats(x, idx, k)
    ro = R.ema_stats(x, idx, k, method="one_hot")[1]
    assert torch.equal(counts, rc)
    assert sums.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(sums, rs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums, ro, rtol=1e-5, atol=1e-5)
    ec, es = emu.vq_ema_stats(x, idx.int(), k)
    assert torch.equal(ec, counts) and torch.equal(es, sums)  # same order of additions: bit-identical


def test_ema_stats_deterministic_and_order_defined(emu):
    x = torch.randn(1000, 4) * torch.logspace(-4, 4, 1000)[:, None]
    idx = torch.randint(0, 3, (1000,))
    a = vq.ema_stats(x, idx, 3)[1]
    for _ in range(3):
        assert torch.equal(vq.ema_stats(x, idx, 3)[1], a)
    assert torch.equal(emu.vq_ema_stats(x, idx, 3)[1], a)
    # per code, rows are added in increasing row order
    seq = torch.zeros(3, 4)
    for i in range(1000):
        seq[idx[i]] += x[i]
    assert torch.equal(a, seq)


def test_ema_stats_non_contiguous_opcheck_and_bad_input(emu):
    x = torch.randn(8, 50).t()
    idx = torch.randint(0, 6, (50,))
    torch.testing.assert_close(vq.ema_stats(x, idx, 6)[1], R.ema_stats(x.contiguous(), idx, 6)[1])
    torch.library.opcheck(OPS.vq_ema_stats.default, (torch.randn(30, 3), torch.randint(0, 5, (30,)), 5))
    torch.library.opcheck(OPS.vq_code_counts.default, (torch.randint(0, 5, (30,)), 5))
    for ops in (OPS, emu):
        with pytest.raises(ValueError, match="indices.shape"):
            ops.vq_ema_stats(torch.randn(5, 3), torch.zeros(4, dtype=torch.long), 2)
        with pytest.raises(ValueError, match="indices must be in"):
            ops.vq_ema_stats(torch.randn(5, 3), torch.full((5,), 2), 2)
        with pytest.raises(ValueError, match="x must have 2"):
            ops.vq_ema_stats(torch.randn(5), torch.zeros(5, dtype=torch.long), 2)
        with pytest.raises(TypeError, match="x must be"):
            ops.vq_ema_stats(torch.ones(5, 3, dtype=torch.int32), torch.zeros(5, dtype=torch.long), 2)


def test_ema_update_matches_reference():
    K, D = 16, 4
    embed = torch.randn(K, D)
    cs, ea = torch.ones(K), embed.clone()
    rcs, rea = cs.clone(), ea.clone()
    x = torch.randn(300, D)
    idx = R.nearest(x, embed)
    info = vq.ema_update_(embed, cs, ea, x, idx, decay=0.8, eps=1e-5)
    rc, rs = R.ema_stats(x, idx, K)
    new = R.ema_update(rcs, rea, rc, rs, 0.8, 1e-5)
    torch.testing.assert_close(cs, rcs)
    torch.testing.assert_close(ea, rea)
    torch.testing.assert_close(embed, new)
    assert torch.equal(info["counts"], rc) and info["num_replaced"] == 0


def test_ema_dead_code_replacement_without_duplicates():
    K, D = 32, 3
    embed = torch.randn(K, D)
    cs, ea = torch.full((K,), 5.0), embed.clone()
    x = torch.randn(40, D)
    idx = torch.zeros(40, dtype=torch.long)  # only code 0 used: after the lerp, others drop below 4.5
    info = vq.ema_update_(embed, cs, ea, x, idx, decay=0.8, dead_threshold=4.5,
                          generator=torch.Generator().manual_seed(1))
    assert info["num_replaced"] == K - 1
    rep = embed[info["replaced"]]
    # every replaced code is a distinct row of the batch
    match = (rep[:, None, :] == x[None]).all(-1)
    assert match.any(1).all()
    assert torch.unique(match.float().argmax(1)).numel() == K - 1
    assert torch.all(cs[info["replaced"]] == 4.5)
    torch.testing.assert_close(ea[info["replaced"]], rep * 4.5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        K, D = 8, 3
        g = torch.Generator().manual_seed(0)
        embed = torch.randn(K, D, generator=g)
        cs, ea = torch.ones(K), embed.clone()
        x = torch.randn(50 + 13 * rank, D, generator=torch.Generator().manual_seed(10 + rank))
        idx = R.nearest(x, embed)
        vq.ema_update_(embed, cs, ea, x, idx, decay=0.8, dead_threshold=0.5,
                       generator=torch.Generator().manual_seed(rank))
        torch.save({"embed": embed, "cs": cs, "ea": ea}, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ema_update_ddp_gloo_two_processes(tmp_path):
    import torch.multiprocessing as mp

    port = _free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "r0.pt")
    r1 = torch.load(tmp_path / "r1.pt")
    for key in ("embed", "cs", "ea"):
        assert torch.equal(r0[key], r1[key]), key  # ranks stay in sync
    # equals the single-process update on the concatenated batch (without dead codes in the comparison)
    K, D = 8, 3
    embed = torch.randn(K, D, generator=torch.Generator().manual_seed(0))
    xs = [torch.randn(50 + 13 * r, D, generator=torch.Generator().manual_seed(10 + r)) for r in range(2)]
    idx = torch.cat([R.nearest(x, embed) for x in xs])
    rcs, rea = torch.ones(K), embed.clone()
    rc, rs = R.ema_stats(torch.cat(xs), idx, K)
    new = R.ema_update(rcs, rea, rc, rs, 0.8, 1e-5)
    alive = rcs >= 0.5
    torch.testing.assert_close(r0["cs"][alive], rcs[alive])
    torch.testing.assert_close(r0["embed"][alive], new[alive])


# ============================================ quantize and RVQ ============================================


@pytest.mark.parametrize("convention", ["llamagen", "titok", "taming", "vqtorch"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_quantize_matches_reference(convention, metric):
    z = torch.randn(4, 9, 8, requires_grad=True)
    cb = torch.randn(37, 8, requires_grad=True)
    zq, idx, loss, info = vq.quantize(z, cb, metric=metric, convention=convention, beta=0.25)
    zr, cr = z, cb
    if metric == "cosine":
        zr, cr = F.normalize(z, dim=-1, eps=1e-6), F.normalize(cb, dim=-1, eps=1e-6)
    ridx = R.nearest(zr, cr, metric)
    assert torch.equal(idx, ridx)
    e = cr[ridx]
    _, _, rloss = R.quantize_losses(zr, e, convention, 0.25)
    torch.testing.assert_close(loss, rloss)
    torch.testing.assert_close(zq, zr + (e - zr).detach())
    assert torch.equal(info["counts"], R.code_counts(ridx, 37))
    torch.testing.assert_close(info["perplexity"], R.perplexity(info["counts"]))
    # straight-through: d zq / d z = identity; losses reach the codebook except in the vqtorch convention
    zq.sum().backward(retain_graph=True)
    zg = z.grad.clone()
    if metric == "l2":
        assert torch.equal(zg, torch.ones_like(z))
    z.grad = None
    loss.backward()
    assert (cb.grad is not None and cb.grad.abs().sum() > 0) == (convention != "vqtorch")


def test_quantize_loss_weights():
    z = torch.randn(50, 4)
    e = torch.randn(50, 4)
    m = F.mse_loss(e, z)
    torch.testing.assert_close(vq.quantize_loss(z, e, "llamagen", 0.25)[0], 1.25 * m)
    torch.testing.assert_close(vq.quantize_loss(z, e, "taming", 0.25)[0], 1.25 * m)
    torch.testing.assert_close(vq.quantize_loss(z, e, "vqtorch", 1.0)[0], m)
    zg = z.clone().requires_grad_()
    eg = e.clone().requires_grad_()
    vq.quantize_loss(zg, eg, "taming", 0.25)[0].backward()
    torch.testing.assert_close(eg.grad, 0.25 * 2 * (e - z) / z.numel())  # beta on the codebook term
    torch.testing.assert_close(zg.grad, 2 * (z - e) / z.numel())
    with pytest.raises(ValueError, match="convention"):
        vq.quantize_loss(z, e, "nope")
    with pytest.raises(ValueError, match="z.shape"):
        vq.quantize(torch.randn(3, 5), torch.randn(7, 4))
    with pytest.raises(ValueError, match="codebook"):
        vq.quantize(torch.randn(3, 4), torch.randn(7, 4, 1))


def test_residual_vq_matches_reference():
    z = torch.randn(6, 5, 8, requires_grad=True)
    cbs = torch.randn(3, 33, 8)
    out, idx, losses, info = vq.residual_vq(z, cbs)
    rout, ridx, rlosses = R.residual_vq(z, list(cbs))
    assert idx.shape == (6, 5, 3)
    assert torch.equal(idx, ridx)
    torch.testing.assert_close(out, rout)
    torch.testing.assert_close(losses, rlosses)
    # levels quantize the detached residual of the previous ones
    resid = z.detach()
    for lvl in range(3):
        assert torch.equal(idx[..., lvl], R.nearest(resid, cbs[lvl]))
        resid = resid - cbs[lvl][idx[..., lvl]]
    torch.testing.assert_close(out.detach(), sum(cbs[l][idx[..., l]] for l in range(3)))
    assert info["counts"].shape == (3, 33) and torch.all(info["counts"].sum(-1) == 30)
    losses.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


# ================================================ nn modules ================================================


def test_vector_quantizer_ema_module_forward_backward():
    from imtok_cuda.nn.quantizers import VectorQuantizer

    m = VectorQuantizer(8, 64, ema=True, dead_code_threshold=0.01)
    old = m.embed.clone()
    z = torch.randn(4, 16, 8, requires_grad=True)
    zq, idx, loss, info = m(z)
    assert zq.shape == z.shape and idx.shape == (4, 16) and loss.dim() == 0
    assert torch.equal(idx, R.nearest(z, old))  # quantized with the old codebook
    rcs, rea = torch.ones(64), old.clone()
    rc, rs = R.ema_stats(z.detach().reshape(-1, 8), idx.reshape(-1), 64)
    new = R.ema_update(rcs, rea, rc, rs, 0.8, 1e-5)
    alive = rcs >= 0.01
    torch.testing.assert_close(m.embed[alive], new[alive])
    (zq.sum() + loss).backward()
    assert z.grad is not None
    assert info["counts"].sum() == 64 and info["perplexity"] > 1
    m.eval()
    before = m.embed.clone()
    zq2, _, _, _ = m(z)
    assert torch.equal(m.embed, before)  # no update in eval


@pytest.mark.parametrize("metric,normalize", [("l2", False), ("l2", True), ("cosine", False)])
def test_vector_quantizer_learned_module(metric, normalize):
    from imtok_cuda.nn.quantizers import VectorQuantizer

    m = VectorQuantizer(6, 32, metric=metric, normalize=normalize, ema=False)
    z = torch.randn(3, 10, 6, requires_grad=True)
    zq, idx, loss, info = m(z)
    if metric == "cosine":
        zr = F.normalize(z, dim=-1, eps=1e-6)
    else:
        zr = F.normalize(z, dim=-1) if normalize else z
    assert torch.equal(idx, R.nearest(zr, m.codebook.detach(), metric))
    loss.backward()
    assert m.embed.grad is not None and m.embed.grad.abs().sum() > 0
    m2 = VectorQuantizer(6, 32, ema=False, straight_through_eval=False).eval()
    zq2, idx2, _, _ = m2(z)
    assert torch.equal(zq2, m2.embed[idx2])  # exact rows in eval (vector-quantize-pytorch)
    with pytest.raises(ValueError, match="loss_convention"):
        VectorQuantizer(6, 32, loss_convention="bad")
    with pytest.raises(ValueError, match="z.shape"):
        m(torch.randn(3, 5))


def test_vector_quantizer_latent_perturbation():
    from imtok_cuda.nn.quantizers import VectorQuantizer

    m = VectorQuantizer(4, 200, ema=False, perturbation={"alpha": 1.0, "beta": 0.5, "delta": 50})
    z = torch.randn(8, 12, 4)
    _, idx, _, info = m(z)
    assert info["num_perturbed"] > 0
    m.eval()
    _, idx_eval, _, info_eval = m(z)
    assert "num_perturbed" not in info_eval
    assert torch.equal(idx_eval, R.nearest(z, m.embed.detach()))


def test_residual_vq_module():
    from imtok_cuda.nn.quantizers import ResidualVQ

    m = ResidualVQ(8, 16, num_quantizers=3, ema=False)
    z = torch.randn(2, 7, 8, requires_grad=True)
    out, idx, losses, info = m(z)
    assert idx.shape == (2, 7, 3) and losses.shape == (3,)
    torch.testing.assert_close(out.detach(), sum(m.layers[l].embed.detach()[idx[..., l]] for l in range(3)))
    (out.sum() + losses.sum()).backward()
    assert z.grad is not None
    me = ResidualVQ(8, 16, num_quantizers=2, ema=True)
    out, idx, losses, info = me(z)
    assert info["perplexity"].shape == (2,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fsq_module(dtype):
    from imtok_cuda.nn.quantizers import FSQ

    m = FSQ([8, 5, 5, 5])
    z = torch.randn(2, 9, 4).to(dtype).requires_grad_()
    out, idx, loss, info = m(z)
    assert out.dtype == dtype and idx.dtype == torch.int32
    assert torch.equal(idx, R.fsq(z.detach(), [8, 5, 5, 5])[1])
    out.float().sum().backward()
    assert z.grad is not None
    assert int(info["counts"].sum()) == 18
    mp = FSQ([8, 5, 5, 5], dim=12)
    out, idx, _, _ = mp(torch.randn(3, 12))
    assert out.shape == (3, 12)
    torch.testing.assert_close(mp.indices_to_codes(idx), mp.project_out(vq.fsq_indices_to_codes(idx, [8, 5, 5, 5])))


@pytest.mark.parametrize("spherical", [False, True])
def test_lfq_module(spherical):
    from imtok_cuda.nn.quantizers import LFQ

    m = LFQ(10, spherical=spherical, commitment_loss_weight=0.25)
    x = torch.randn(3, 20, 10, requires_grad=True)
    out, idx, loss, info = m(x)
    _, _, xu = R.lfq(x.detach(), 1.0, spherical)
    ps, cb = R.anchor_lfq_entropy(xu, 100.0, 1.0, spherical)
    commit = F.mse_loss(xu, R.lfq(x.detach(), 1.0, spherical)[0])
    torch.testing.assert_close(loss, 0.1 * (ps - cb) + 0.25 * commit, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert x.grad is not None
    torch.testing.assert_close(m.indices_to_codes(idx), out.detach())
    m.eval()
    _, _, l2, _ = m(x)
    assert l2.item() == 0.0


def test_binary_quantizer_module():
    from imtok_cuda.nn.quantizers import BinaryQuantizer

    m = BinaryQuantizer(6, embed_dim=4)
    z = torch.randn(5, 6, requires_grad=True)
    out, bits, loss, info = m(z)
    assert out.shape == (5, 4) and loss.item() > 0
    (out.sum() + loss).backward()
    assert z.grad is not None and m.embedding.grad is not None
    m.eval()
    out, bits, loss, _ = m(z)
    assert torch.equal(bits, (z.detach() > 0).float()) and loss.item() == 0.0


def test_modules_torch_compile():
    from imtok_cuda.nn.quantizers import FSQ, LFQ

    for m, x in ((FSQ([8, 5, 5, 5]), torch.randn(4, 4)), (LFQ(6).eval(), torch.randn(4, 6))):
        f = torch.compile(lambda t: m(t)[:2], fullgraph=True, backend="aot_eager")
        out, idx = f(x)
        ro, ri = m(x)[:2]
        assert torch.equal(idx, ri) and torch.equal(out, ro)
    f = torch.compile(lambda i: (vq.code_counts(i, 10), vq.ema_stats(torch.ones(6, 2), i, 10)), fullgraph=True,
                      backend="aot_eager")
    i = torch.tensor([1, 1, 3, 9, 0, 1])
    c, (c2, s) = f(i)
    assert torch.equal(c, R.code_counts(i, 10)) and torch.equal(c2, c)


# ================================================= real GPU =================================================


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")
def test_cuda_kernels_match_cpu():
    levels = [8, 8, 8, 5, 5, 5]
    z = torch.randn(65536, 6) * 2
    c, i = vq.fsq(z, levels)
    cg, ig = vq.fsq(z.cuda(), levels)
    assert torch.equal(cg.cpu(), c) and torch.equal(ig.cpu(), i)
    g = torch.randn_like(z)
    assert torch.equal(OPS.vq_fsq_backward(g.cuda(), z.cuda(), levels).cpu(), OPS.vq_fsq_backward(g, z, levels))
    assert torch.equal(vq.fsq_indices_to_codes(ig, levels).cpu(), vq.fsq_indices_to_codes(i, levels))
    x = torch.randn(65536, 8)
    idx = torch.randint(0, 16384, (65536,))
    idx[:5000] = 7
    counts, sums = vq.ema_stats(x, idx, 16384)
    cg, sg = vq.ema_stats(x.cuda(), idx.cuda(), 16384)
    assert torch.equal(cg.cpu(), counts) and torch.equal(sg.cpu(), sums)
    assert torch.equal(vq.code_counts(idx.cuda(), 16384).cpu(), counts)
    q, li, _ = vq.lfq_quantize(x)
    qg, lig, _ = vq.lfq_quantize(x.cuda())
    assert torch.equal(qg.cpu(), q) and torch.equal(lig.cpu(), li)
    xe = torch.randn(4096, 14) * 0.05
    torch.testing.assert_close(vq.lfq_codebook_entropy(xe.cuda()).cpu(), vq.lfq_codebook_entropy(xe),
                               rtol=1e-4, atol=1e-4)


def test_ema_update_more_dead_codes_than_rows_and_bad_input():
    K, D = 16, 2
    embed = torch.randn(K, D)
    cs, ea = torch.full((K,), 5.0), embed.clone()
    x = torch.randn(3, D)
    info = vq.ema_update_(embed, cs, ea, x, torch.zeros(3, dtype=torch.long), dead_threshold=4.5)
    assert info["num_replaced"] == K - 1
    assert ((embed[info["replaced"]][:, None, :] == x[None]).all(-1)).any(1).all()  # sampled with replacement
    with pytest.raises(ValueError, match="decay"):
        vq.ema_update_(embed, cs, ea, x, torch.zeros(3, dtype=torch.long), decay=1.5)
    with pytest.raises(ValueError, match="indices"):
        vq.ema_update_(embed, cs, ea, x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="codebooks"):
        vq.residual_vq(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="codebooks"):
        vq.residual_vq(torch.randn(3, 2), [])


try:
    from hypothesis import given, settings, strategies as st

    @pytest.mark.emulated
    @settings(max_examples=25, deadline=None)
    @given(levels=st.lists(st.integers(2, 9), min_size=1, max_size=6), n=st.integers(0, 70),
           scale=st.floats(0.1, 8.0), seed=st.integers(0, 2**16))
    def test_fsq_hypothesis_matches_anchor_and_emulated(levels, n, scale, seed):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, len(levels), generator=g) * scale
        c, i = vq.fsq(z, levels)
        ac, ai = R.anchor_fsq(z, levels)
        assert torch.equal(c, ac) and torch.equal(i, ai)
        ec, ei = torch.ops.imtok_cuda_emu.vq_fsq(z, levels)
        assert torch.equal(ec, c) and torch.equal(ei, i)
        assert torch.equal(vq.fsq_indices_to_codes(i, levels), c)

    @pytest.mark.emulated
    @settings(max_examples=20, deadline=None)
    @given(n=st.integers(0, 200), k=st.integers(1, 50), d=st.integers(1, 5), seed=st.integers(0, 2**16))
    def test_ema_stats_hypothesis_emulated(n, k, d, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d, generator=g)
        idx = torch.randint(0, k, (n,), generator=g)
        counts, sums = vq.ema_stats(x, idx, k)
        rc, rs = R.ema_stats(x, idx, k)
        assert torch.equal(counts, rc)
        torch.testing.assert_close(sums, rs)
        ec, es = torch.ops.imtok_cuda_emu.vq_ema_stats(x, idx, k)
        assert torch.equal(ec, counts) and torch.equal(es, sums)
except ImportError:  # hypothesis is a test extra
    pass


def test_quantize_bf16_input_searches_in_the_codebook_precision():
    z = torch.randn(200, 8).bfloat16()
    cb = torch.randn(300, 8)
    zq, idx, loss, info = vq.quantize(z, cb)
    assert torch.equal(idx, R.nearest(z.float(), cb))
    assert zq.dtype == torch.bfloat16


# ================================ values against independent restatements ===================================
# Each test restates the anchor's math inline (not via the code under test), so a plausible bug in the Python
# layer (a forgotten normalization, a codebook read after its update, a result computed and dropped, a missing
# smoothing term) changes a value the test compares.


def _nearest64(x, cb):
    """argmin_k |x - e_k|^2 in float64 with the lowest index on ties (argmin's rule)."""
    x2, e = x.reshape(-1, x.shape[-1]).double(), cb.double()
    d = (x2 * x2).sum(-1, keepdim=True) + (e * e).sum(-1)[None] - 2 * x2 @ e.t()
    return d.argmin(-1).reshape(x.shape[:-1])


@pytest.mark.parametrize("convention", ["llamagen", "taming"])
def test_quantize_normalize_normalizes_both_sides(convention):
    # codebook rows of very different norms: without normalizing the codebook the l2 search picks other codes
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    cb = torch.randn(40, 6, generator=gen, dtype=torch.float64) * torch.logspace(-1, 1, 40, dtype=torch.float64)[:, None]
    zq, idx, loss, info = vq.quantize(z, cb, normalize=True, convention=convention, beta=0.25)
    zn = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cn = cb / cb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    ridx = _nearest64(zn, cn)
    assert not torch.equal(ridx, _nearest64(zn, cb)), "the test input must tell the two codebooks apart"
    assert torch.equal(idx, ridx)
    torch.testing.assert_close(zq, cn[ridx], rtol=0, atol=1e-12)
    m = ((cn[ridx] - zn) ** 2).mean()
    want = (1 + 0.25) * m  # both conventions: 1.25 * mse at these weights
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)


def test_vector_quantizer_normalize_values():
    from imtok_cuda.nn.quantizers import VectorQuantizer

    m = VectorQuantizer(6, 40, normalize=True, ema=False).double()
    with torch.no_grad():
        m.embed.mul_(torch.logspace(-1, 1, 40, dtype=torch.float64)[:, None])
    z = torch.randn(5, 7, 6, dtype=torch.float64)
    zq, idx, loss, _ = m(z)
    zn = z / z.norm(dim=-1, keepdim=True)
    cn = m.embed.detach() / m.embed.detach().norm(dim=-1, keepdim=True)
    assert torch.equal(idx, _nearest64(zn, cn))
    torch.testing.assert_close(zq, cn[idx], rtol=0, atol=1e-12)


@pytest.mark.parametrize("eps", [0.5, 3.0])
def test_ema_update_laplace_smoothing_values(eps):
    # a large eps and fp64 make the smoothing term visible (at eps = 1e-5 it hides in fp32 rounding)
    K, D, decay = 6, 3, 0.7
    gen = torch.Generator().manual_seed(5)
    embed = torch.randn(K, D, generator=gen, dtype=torch.float64)
    cs = torch.rand(K, generator=gen, dtype=torch.float64)
    ea = torch.randn(K, D, generator=gen, dtype=torch.float64)
    x = torch.randn(20, D, generator=gen, dtype=torch.float64)
    idx = torch.tensor([0, 0, 1, 2, 2, 2, 0, 1, 1, 2, 0, 0, 1, 2, 0, 0, 2, 1, 1, 0])  # codes 3..5 unused
    cs0, ea0 = cs.clone(), ea.clone()
    vq.ema_update_(embed, cs, ea, x, idx, decay=decay, eps=eps)
    # restated: vector-quantize-pytorch EuclideanCodebook (ema_inplace + laplace_smoothing)
    counts = torch.zeros(K, dtype=torch.float64).index_add_(0, idx, torch.ones(20, dtype=torch.float64))
    sums = torch.zeros(K, D, dtype=torch.float64).index_add_(0, idx, x)
    cs_new = cs0 * decay + counts * (1 - decay)
    ea_new = ea0 * decay + sums * (1 - decay)
    n = cs_new.sum()
    smoothed = (cs_new + eps) / (n + K * eps) * n
    torch.testing.assert_close(cs, cs_new, rtol=1e-14, atol=0)
    torch.testing.assert_close(ea, ea_new, rtol=1e-14, atol=0)
    torch.testing.assert_close(embed, ea_new / smoothed[:, None], rtol=1e-13, atol=0)
    assert not torch.allclose(embed, ea_new / cs_new[:, None], rtol=1e-3), "smoothing must be visible here"


def test_vector_quantizer_ema_module_values():
    from imtok_cuda.nn.quantizers import VectorQuantizer

    m = VectorQuantizer(4, 8, ema=True, decay=0.6, eps=0.25).double()
    z = torch.randn(30, 4, dtype=torch.float64)
    e0, cs0, ea0 = m.embed.clone(), m.cluster_size.clone(), m.embed_avg.clone()
    zq, idx, loss, info = m(z)
    ridx = _nearest64(z, e0)
    assert torch.equal(idx, ridx)
    torch.testing.assert_close(zq, e0[ridx], rtol=0, atol=1e-12)  # the old codebook's rows (straight-through)
    torch.testing.assert_close(loss, ((e0[ridx] - z) ** 2).mean(), rtol=1e-12, atol=0)  # vqtorch, weight 1
    counts = torch.bincount(ridx, minlength=8).double()
    sums = torch.zeros(8, 4, dtype=torch.float64).index_add_(0, ridx, z)
    cs = cs0 * 0.6 + counts * 0.4
    ea = ea0 * 0.6 + sums * 0.4
    n = cs.sum()
    torch.testing.assert_close(m.embed, ea / ((cs + 0.25) / (n + 8 * 0.25) * n)[:, None], rtol=1e-13, atol=0)


@pytest.mark.parametrize("ema", [False, True])
def test_residual_vq_module_values(ema):
    """Each level quantizes the residual with the codebook as it was before the level's own EMA update."""
    from imtok_cuda.nn.quantizers import ResidualVQ

    m = ResidualVQ(5, 12, num_quantizers=3, ema=ema, decay=0.5).double()
    z = torch.randn(4, 6, 5, dtype=torch.float64)
    old = [layer.codebook.detach().clone() for layer in m.layers]
    out, idx, losses, info = m(z)
    resid, total = z.clone(), torch.zeros_like(z)
    for lvl, cb in enumerate(old):
        ri = _nearest64(resid, cb)
        assert torch.equal(idx[..., lvl], ri), f"level {lvl}"
        q = cb[ri]
        total = total + q
        resid = resid - q
    torch.testing.assert_close(out, total, rtol=0, atol=1e-12)
    if ema:  # the update happened, and it is what the output must not have used
        assert not torch.allclose(m.layers[0].codebook, old[0])


def test_vector_quantizer_perturbed_codes_reach_zq():
    from imtok_cuda.nn.quantizers import VectorQuantizer
    from imtok_cuda.reference import vq as RV

    pert = {"alpha": 1.0, "beta": 0.5, "delta": 20}
    m = VectorQuantizer(4, 64, ema=False, perturbation=pert).double()
    z = torch.randn(8, 12, 4, dtype=torch.float64)
    torch.manual_seed(11)
    zq, idx, loss, info = m(z)
    torch.manual_seed(11)  # the same draws, through the reference protocol
    new = RV.latent_perturbation(z, m.embed.detach(), idx, **pert)
    assert int((new != idx).sum()) == info["num_perturbed"] > 0
    torch.testing.assert_close(zq, m.embed.detach()[new], rtol=0, atol=1e-12)
    # the straight-through gradient still reaches z
    zz = z.clone().requires_grad_()
    torch.manual_seed(11)
    m(zz)[0].sum().backward()
    assert torch.equal(zz.grad, torch.ones_like(zz))


def test_residual_vq_function_levels_use_detached_residual_values():
    z = torch.randn(3, 4, 6, dtype=torch.float64)
    cbs = torch.randn(2, 9, 6, dtype=torch.float64)
    out, idx, losses, _ = vq.residual_vq(z, cbs)
    r0 = _nearest64(z, cbs[0])
    r1 = _nearest64(z - cbs[0][r0], cbs[1])
    assert torch.equal(idx[..., 0], r0) and torch.equal(idx[..., 1], r1)
    torch.testing.assert_close(out, cbs[0][r0] + cbs[1][r1], rtol=0, atol=1e-12)
    l0 = 1.25 * ((cbs[0][r0] - z) ** 2).mean()
    l1 = 1.25 * ((cbs[1][r1] - (z - cbs[0][r0])) ** 2).mean()
    torch.testing.assert_close(losses, torch.stack([l0, l1]), rtol=1e-12, atol=0)


def test_quantize_defaults_info_and_batched_normalize_values():
    """Default beta (0.25, llamagen), the info losses, normalize over the last dim of a batched z, a 1-D z."""
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64)
    cb = torch.randn(30, 6, generator=gen, dtype=torch.float64) * torch.logspace(-1, 1, 30, dtype=torch.float64)[:, None]
    zq, idx, loss, info = vq.quantize(z, cb, normalize=True)
    zn = z / z.norm(dim=-1, keepdim=True)
    cn = cb / cb.norm(dim=-1, keepdim=True)
    assert torch.equal(idx, _nearest64(zn, cn))
    m = ((cn[idx] - zn) ** 2).mean()
    torch.testing.assert_close(loss, m + 0.25 * m, rtol=1e-12, atol=0)  # llamagen: codebook + 0.25 commitment
    torch.testing.assert_close(info["commitment_loss"], m, rtol=1e-12, atol=0)
    torch.testing.assert_close(info["codebook_loss"], m, rtol=1e-12, atol=0)
    torch.testing.assert_close(vq.quantize_loss(zn, cn[idx])[0], 1.25 * m, rtol=1e-12, atol=0)  # its default beta
    zq1, idx1, _, _ = vq.quantize(z[0, 0], cb)  # a single vector [D]
    assert idx1.shape == () and int(idx1) == int(_nearest64(z[0, 0][None], cb)[0])
    torch.testing.assert_close(zq1, cb[idx1], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="metric"):
        vq.nearest_indices(z, cb, "dot")
