"""vq.nearest / vq.nearest_topk: reference vs CPU kernel vs emulated CUDA kernel (vs real CUDA with -m cuda)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import imtok_cuda
from imtok_cuda import vq
from imtok_cuda.reference import vq as ref

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
METRICS = ["l2", "cosine"]


def assert_tie_aware(x, codebook, idx, dist, metric, rtol):
    """idx must be the reference argmin, except where the reference itself cannot separate the two codes
    (their reference distances differ by less than rounding): then the chosen code must be as close."""
    d = ref.distance_matrix(x, codebook, metric)
    ridx, rdist = ref.nearest(x, codebook, metric)
    chosen = d.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    scale = d.abs().amax(-1).clamp_min(1.0)
    assert torch.all((chosen - rdist).abs() <= rtol * scale), "a farther code was chosen"
    mismatch = (idx != ridx).float().mean().item()
    assert mismatch <= 0.01, f"{mismatch:.3%} of indices differ from the reference"
    torch.testing.assert_close(dist.to(rdist.dtype), rdist, rtol=rtol, atol=rtol * scale.max().item())


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N,K,D", [(1, 1, 1), (7, 5, 3), (200, 300, 12), (129, 1000, 8), (64, 70, 256)])
def test_cpu_matches_reference(metric, dtype, N, K, D):
    x = torch.randn(N, D, dtype=dtype)
    cb = torch.randn(K, D, dtype=dtype)
    idx, dist = vq.nearest(x, cb, metric)
    assert idx.dtype == torch.int64 and dist.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rtol = 1e-12 if dtype == torch.float64 else 2e-6
    assert_tie_aware(x, cb, idx, dist, metric, rtol)
    if dtype == torch.float64:  # no near-ties at this precision: exact indices
        assert torch.equal(idx, ref.nearest(x, cb, metric)[0])


def integer_problem(N=97, K=41, D=5, dup=True):
    """Small-integer data: every distance is exact in fp32, so ties are real and the rule is testable."""
    x = torch.randint(-3, 4, (N, D)).float()
    cb = torch.randint(-3, 4, (K, D)).float()
    if dup:
        cb[K // 2] = cb[3]  # duplicated code: the lower index (3) must win
        x[:5] = cb[3]       # x equal to a (duplicated) code
    return x, cb


@pytest.mark.parametrize("impl", ["cpu", "emulated"])
def test_exact_ties_lowest_index(impl, request):
    x, cb = integer_problem()
    ops = torch.ops.imtok_cuda if impl == "cpu" else request.getfixturevalue("emu")
    dist, idx = ops.vq_nearest(x, cb, "l2")
    ridx, rdist = ref.nearest(x, cb, "l2")
    assert torch.equal(idx, ridx)
    assert torch.equal(dist, rdist)
    assert torch.all(idx[:5] == 3)
    tdist, tidx = ops.vq_nearest_topk(x, cb, 7, "l2")
    r_tidx, r_tdist = ref.nearest_topk(x, cb, 7, "l2")
    assert torch.equal(tidx, r_tidx) and torch.equal(tdist, r_tdist)
    assert torch.equal(tidx[:, 0], idx)


def test_zero_vectors_cosine():
    cb = torch.randn(9, 4)
    x = torch.zeros(3, 4)
    idx, dist = vq.nearest(x, cb, "cosine")
    assert torch.equal(idx, torch.zeros(3, dtype=torch.int64))  # all similarities 0: lowest index
    torch.testing.assert_close(dist, torch.ones(3))


def test_nan_follows_torch_argmin():
    x = torch.randn(6, 4)
    cb = torch.randn(8, 4)
    x[1, 2] = float("nan")  # a NaN row: every distance NaN -> index 0
    cb[5, 0] = float("nan")  # a NaN code: every row's distance to it is NaN -> it wins (first NaN)
    idx, dist = vq.nearest(x, cb)
    ridx, _ = ref.nearest(x, cb)
    assert torch.equal(idx, ridx)
    assert idx[1] == 0 and torch.all(idx[torch.arange(6) != 1] == 5)
    assert torch.isnan(dist).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", METRICS)
def test_half_inputs_accumulate_in_fp32(dtype, metric):
    x = torch.randn(150, 16).to(dtype)
    cb = torch.randn(257, 16).to(dtype)
    idx, dist = vq.nearest(x, cb, metric)
    assert dist.dtype == torch.float32
    # the reference upcasts to fp32 first, so only fp32 rounding separates them
    assert_tie_aware(x, cb, idx, dist, metric, rtol=2e-6)


def test_shapes_empty_leading_dims_noncontiguous():
    cb = torch.randn(33, 6)
    for shape in [(0, 6), (2, 0, 6), (6,), (2, 3, 6)]:
        x = torch.randn(shape)
        idx, dist = vq.nearest(x, cb)
        assert idx.shape == shape[:-1] and dist.shape == shape[:-1]
        if x.numel():
            assert torch.equal(idx, ref.nearest(x, cb)[0])
    xt = torch.randn(6, 40).t()  # non-contiguous [40, 6]
    cbt = torch.randn(66, 6)[::2]  # strided codebook
    assert not xt.is_contiguous() and not cbt.is_contiguous()
    assert torch.equal(vq.nearest(xt, cbt)[0], ref.nearest(xt, cbt)[0])
    ti, td = vq.nearest_topk(torch.randn(0, 6), cb, 4)
    assert ti.shape == (0, 4)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [1, 5, 33])
def test_topk_matches_reference(metric, k):
    x = torch.randn(70, 10, dtype=torch.float64)
    cb = torch.randn(33, 10, dtype=torch.float64)
    ti, td = vq.nearest_topk(x, cb, k, metric)
    ri, rd = ref.nearest_topk(x, cb, k, metric)
    assert torch.equal(ti, ri)
    torch.testing.assert_close(td, rd)
    assert torch.equal(ti[:, 0], vq.nearest(x, cb, metric)[0])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("N,K,D", [(3, 7, 12), (67, 5000, 12), (130, 2731, 8), (9, 40, 47)])
def test_register_path_equals_generic_fold(metric, N, K, D):
    """fp32 nearest with D < 48 checks the running minimum in registers (AVX2 path on x86); nearest_topk
    folds every distance in order. Same distances, same order: bit-identical results, across L2 chunks
    (K=5000 at D=12 is two chunks), partial row groups and partial last lanes."""
    g = torch.Generator().manual_seed(N * K + D)
    x = torch.randn(N, D, generator=g)
    cb = torch.randn(K, D, generator=g)
    cb[K // 2] = cb[K // 3]              # duplicated code: lower index wins, even in another lane or chunk
    x[0] = cb[K // 3]
    x[1] = cb[K - 1] if K > 1 else x[1]  # nearest code in the last, partial lane block
    dist, idx = torch.ops.imtok_cuda.vq_nearest(x, cb, metric)
    tdist, tidx = torch.ops.imtok_cuda.vq_nearest_topk(x, cb, 1, metric)
    assert torch.equal(idx, tidx[:, 0]) and torch.equal(dist, tdist[:, 0])
    assert idx[0] == K // 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("D", [3, 8, 12, 47])
def test_codebook_maps_to_itself_at_distance_zero(dtype, D):
    """Below the BLAS switch (D < 48) |x|^2, |e|^2 and x.e use the same arithmetic, so a code is exactly at
    distance 0 from itself and quantizing the codebook returns each code's first copy (codes far apart
    compared with the rounding of the expanded formula, as random codes in D >= 3 are)."""
    cb = torch.randn(3000, D, generator=torch.Generator().manual_seed(D)).to(dtype)
    _, inverse = torch.unique(cb, dim=0, return_inverse=True)
    first = torch.full((len(cb),), len(cb)).scatter_reduce(0, inverse, torch.arange(len(cb)), "amin")[inverse]
    dist, idx = torch.ops.imtok_cuda.vq_nearest(cb, cb, "l2")
    assert torch.equal(idx, first)
    assert torch.all(dist == 0)


def test_avx512_and_avx2_register_paths_agree_bitwise(avx512_and_avx2):
    """On an AVX-512 CPU the register path uses 512-bit vectors; IMTOK_DISABLE_AVX512=1 (read once per process)
    keeps it on AVX2. Same FMA chains: the two processes must return the same bits."""
    script = (
        "import sys, torch, imtok_cuda\n"
        "g = torch.Generator().manual_seed(3)\n"
        "x = torch.randn(301, 12, generator=g); cb = torch.randn(5000, 12, generator=g)\n"
        "cb[4000] = cb[17]; x[:3] = cb[17]; x[5, 1] = float('nan')\n"
        "out = [torch.ops.imtok_cuda.vq_nearest(x, cb, m) for m in ('l2', 'cosine')]\n"
        "out += [torch.ops.imtok_cuda.vq_nearest_topk(x, cb, 7, 'l2'), torch.ops.imtok_cuda.vq_nearest(x[:, :8], cb[:48, :8], 'l2')]\n"
        "torch.save(out, sys.argv[1])\n"
    )
    results = avx512_and_avx2(script)
    for (d0, i0), (d1, i1) in zip(*results):
        assert torch.equal(i0, i1) and torch.equal(d0.nan_to_num(), d1.nan_to_num())
        assert torch.equal(d0.isnan(), d1.isnan())


def test_register_path_ties_and_nan_across_chunks():
    """Integer data (exact distances, real ties) over a codebook of two L2 chunks; NaN codes and rows."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, (41, 12), generator=g).float()
    cb = torch.randint(-2, 3, (6000, 12), generator=g).float()
    cb[4000:] = cb[:2000]                # every code duplicated in the second chunk
    ridx, rdist = ref.nearest(x, cb)
    dist, idx = torch.ops.imtok_cuda.vq_nearest(x, cb, "l2")
    assert torch.equal(idx, ridx) and torch.equal(dist, rdist)
    cb[4500, 3] = float("nan")           # first NaN in the second chunk wins for every row...
    x[7, 0] = float("nan")               # ...and a NaN row answers 0
    dist, idx = torch.ops.imtok_cuda.vq_nearest(x, cb, "l2")
    assert torch.equal(idx, ref.nearest(x, cb)[0])
    assert idx[7] == 0 and torch.all(idx[torch.arange(41) != 7] == 4500) and torch.isnan(dist).all()


# ---- emulated CUDA kernels ---------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
# tile boundaries: D=64 -> 63 codes per shared-memory tile and no staging of x (D*128*4 > 24 KiB);
# N=129 / 200 leave a partial block of 128 threads
@pytest.mark.parametrize("N,K,D", [(1, 1, 1), (129, 130, 64), (200, 37, 12), (5, 300, 3)])
def test_emulated_cuda_matches_cpu(emu, metric, dtype, N, K, D):
    x = torch.randn(N, D).to(dtype)
    cb = torch.randn(K, D).to(dtype)
    e_dist, e_idx = emu.vq_nearest(x, cb, metric)
    c_dist, c_idx = torch.ops.imtok_cuda.vq_nearest(x, cb, metric)
    rtol = 1e-12 if dtype == torch.float64 else 2e-6
    assert_tie_aware(x, cb, e_idx, e_dist, metric, rtol)
    assert (e_idx != c_idx).float().mean() <= 0.01
    k = min(K, 9)
    e_td, e_ti = emu.vq_nearest_topk(x, cb, k, metric)
    r_ti, r_td = ref.nearest_topk(x, cb, k, metric)
    assert (e_ti != r_ti).float().mean() <= 0.02
    torch.testing.assert_close(e_td.to(r_td.dtype), r_td, rtol=rtol, atol=rtol * max(1.0, r_td.abs().max().item()))


def test_emulated_cuda_empty_and_errors(emu):
    cb = torch.randn(4, 3)
    dist, idx = emu.vq_nearest(torch.randn(0, 3), cb, "l2")
    assert idx.shape == (0,)
    with pytest.raises(ValueError, match="x.shape"):
        emu.vq_nearest(torch.randn(2, 5), cb, "l2")
    with pytest.raises(ValueError, match="k"):
        emu.vq_nearest_topk(torch.randn(2, 3), cb, 5, "l2")


# ---- gradients, opcheck, compile ---------------------------------------------------------------------------
@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck(metric):
    x = torch.randn(20, 6, dtype=torch.float64, requires_grad=True)
    cb = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: vq.nearest(a, b, metric)[1], (x, cb))
    assert torch.autograd.gradcheck(lambda a, b: vq.nearest_topk(a, b, 4, metric)[1], (x, cb))


def test_gradient_matches_reference():
    x = torch.randn(50, 8, requires_grad=True)
    cb = torch.randn(20, 8, requires_grad=True)
    g = torch.randn(50)
    _, d = vq.nearest(x, cb)
    gx, gc = torch.autograd.grad(d, (x, cb), g)
    _, rd = ref.nearest(x, cb)
    rgx, rgc = torch.autograd.grad(rd, (x, cb), g)
    torch.testing.assert_close(gx, rgx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gc, rgc, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_opcheck(metric):
    x = torch.randn(11, 5, requires_grad=True)
    cb = torch.randn(7, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.imtok_cuda.vq_nearest.default, (x, cb, metric))
    torch.library.opcheck(torch.ops.imtok_cuda.vq_nearest_topk.default, (x, cb, 3, metric))


def test_torch_compile_fullgraph():
    x = torch.randn(40, 12)
    cb = torch.randn(64, 12)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, cb):
        idx, d = vq.nearest(x, cb)
        ti, _ = vq.nearest_topk(x, cb, 3)
        return cb[idx] + d.unsqueeze(-1), ti

    out, ti = f(x, cb)
    idx, d = vq.nearest(x, cb)
    torch.testing.assert_close(out, cb[idx] + d.unsqueeze(-1))
    assert torch.equal(ti[:, 0], idx)


# ---- bad input ---------------------------------------------------------------------------------------------
def test_bad_input_messages():
    cb = torch.randn(8, 4)
    with pytest.raises(ValueError, match="codebook"):
        vq.nearest(torch.randn(3, 4), torch.randn(8, 4, 1))
    with pytest.raises(ValueError, match="x.shape"):
        vq.nearest(torch.randn(3, 5), cb)
    with pytest.raises(ValueError, match="metric"):
        vq.nearest(torch.randn(3, 4), cb, "l1")
    with pytest.raises(ValueError, match="k"):
        vq.nearest_topk(torch.randn(3, 4), cb, 9)
    with pytest.raises(ValueError, match="k"):
        vq.nearest_topk(torch.randn(3, 4), torch.randn(200, 4), 129)
    # the C++ entry points check too (direct torch.ops calls)
    ops = torch.ops.imtok_cuda
    with pytest.raises(TypeError, match="x must be float"):
        ops.vq_nearest(torch.randint(0, 3, (3, 4)), cb, "l2")
    with pytest.raises(TypeError, match="same dtype"):
        ops.vq_nearest(torch.randn(3, 4, dtype=torch.float64), cb, "l2")
    with pytest.raises(ValueError, match="codebook must have 2"):
        ops.vq_nearest(torch.randn(3, 4), torch.randn(4), "l2")
    with pytest.raises(ValueError, match="at least one code"):
        ops.vq_nearest(torch.randn(3, 4), torch.randn(0, 4), "l2")
    with pytest.raises(ValueError, match="same device"):
        ops.vq_nearest(torch.randn(3, 4), torch.randn(8, 4, device="meta"), "l2")
    with pytest.raises(ValueError, match="must not exceed"):
        ops.vq_nearest_topk(torch.randn(3, 4), cb, 9, "l2")


# ---- hypothesis: random shapes -----------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(N=st.integers(0, 70), K=st.integers(1, 90), D=st.integers(1, 40), metric=st.sampled_from(METRICS),
       seed=st.integers(0, 2**31 - 1))
def test_hypothesis_shapes(N, K, D, metric, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, dtype=torch.float64, generator=g)
    cb = torch.randn(K, D, dtype=torch.float64, generator=g)
    idx, dist = vq.nearest(x, cb, metric)
    ridx, rdist = ref.nearest(x, cb, metric)
    assert torch.equal(idx, ridx)
    torch.testing.assert_close(dist, rdist)


# ---- latent perturbation -----------------------------------------------------------------------------------
def test_latent_perturbation_matches_reference():
    x = torch.randn(10, 16, 8)
    cb = torch.randn(50, 8)
    idx, _ = vq.nearest(x, cb)
    out = vq.latent_perturbation(x, cb, idx, alpha=0.5, beta=0.3, delta=10, generator=torch.Generator().manual_seed(3))
    rout = ref.latent_perturbation(x, cb, idx, alpha=0.5, beta=0.3, delta=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, rout)
    assert torch.equal(out[3:], idx[3:])  # only the first floor(10 * 0.3) samples are perturbed
    assert (out[:3] != idx[:3]).any()
    top10 = vq.nearest_topk(x[:3], cb, 10)[0]
    assert (top10 == out[:3].unsqueeze(-1)).any(-1).all()  # every code comes from the top-delta set


# ---- real GPU ----------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(metric, dtype):
    x = torch.randn(3000, 12).to(dtype)
    cb = torch.randn(4096, 12).to(dtype)
    idx, dist = vq.nearest(x.cuda(), cb.cuda(), metric)
    assert_tie_aware(x, cb, idx.cpu(), dist.cpu(), metric, rtol=2e-6 if dtype != torch.float64 else 1e-12)
    ti, td = vq.nearest_topk(x.cuda(), cb.cuda(), 16, metric)
    assert torch.equal(ti[:, 0], idx)
    xi, ci = integer_problem()
    assert torch.equal(vq.nearest(xi.cuda(), ci.cuda())[0].cpu(), ref.nearest(xi, ci)[0])
