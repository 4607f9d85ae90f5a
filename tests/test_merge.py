"""ToMe / tomesd merging: reference (upstream conventions) vs fused CPU kernels vs emulated CUDA kernels vs an
independent Python-loop implementation."""
import math

import pytest
import torch

import imtok_cuda
from imtok_cuda import merge as M
from imtok_cuda.reference import merge as R

EMU = imtok_cuda.emulation_available()
emu_ops = torch.ops.imtok_cuda_emu if EMU else None
cuda = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOKEN_FLAGS = [(False, False), (True, False), (True, True), (False, True)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _r_values(T, ct, dt):
    rmax = (T - int(ct) - int(dt)) // 2
    return sorted({1, 16, rmax, rmax + 5})


def _plan_tuple(p):
    return tuple(p[:3])


# ---------------------------------------------------------------------------------------------------------
# an independent implementation: plain Python loops, float64, stable ordering (inputs have no ties)
# ---------------------------------------------------------------------------------------------------------
def loop_plan(metric, r, ct, dt, apos=None, bpos=None):
    B, T, _ = metric.shape
    m = metric.double()
    apos = list(range(0, T, 2)) if apos is None else [int(v) for v in apos]
    bpos = list(range(1, T, 2)) if bpos is None else [int(v) for v in bpos]
    r = min(r, (T - int(ct) - int(dt)) // 2) if ct or dt or apos == list(range(0, T, 2)) else min(r, len(apos))
    srcs, dsts, unms = [], [], []
    for b in range(B):
        rows = [m[b, t] / m[b, t].norm() for t in range(T)]
        best, arg = [], []
        for i, ta in enumerate(apos):
            bv, bj = -math.inf, 0
            if not (ct and i == 0):
                for j, tb in enumerate(bpos):
                    if dt and j == 0:
                        continue
                    s = float(torch.dot(rows[ta], rows[tb]))
                    if s > bv:
                        bv, bj = s, j
            best.append(bv)
            arg.append(bj)
        order = sorted(range(len(apos)), key=lambda i: -best[i])
        src = order[:r]
        unm = order[r:]
        if ct:
            unm = sorted(unm)
        srcs.append(src)
        dsts.append([arg[i] for i in src])
        unms.append(unm)
    t = lambda v: torch.tensor(v, dtype=torch.int64).reshape(B, -1)  # noqa: E731
    return t(srcs), t(dsts), t(unms)


def loop_merge(x, plan, mode, distill=False, apos=None, bpos=None, size=None):
    src, dst, unm = (p.tolist() for p in plan[:3])
    B, T, C = x.shape
    apos = list(range(0, T, 2)) if apos is None else [int(v) for v in apos]
    bpos = list(range(1, T, 2)) if bpos is None else [int(v) for v in bpos]
    outs, sizes = [], []
    for b in range(B):
        rows_u = [x[b, apos[i]] for i in unm[b]]
        rows_d, size_d = [], []
        for j, tb in enumerate(bpos):
            members = [tb] + [apos[src[b][k]] for k in range(len(src[b])) if dst[b][k] == j]
            vals = torch.stack([x[b, t] for t in members])
            if size is not None:
                s = torch.stack([size[b, t] for t in members])
                rows_d.append((vals * s).sum(0) / s.sum(0))
                size_d.append(s.sum(0))
            elif mode == "sum":
                rows_d.append(vals.sum(0))
            elif mode == "mean":
                rows_d.append(vals.mean(0))
            else:
                rows_d.append(vals.amax(0))
        if size is not None:
            rows_u = [x[b, apos[i]] for i in unm[b]]
            size_u = [size[b, apos[i]] for i in unm[b]]
        if distill:
            rows = [rows_u[0], rows_d[0]] + rows_u[1:] + rows_d[1:]
        else:
            rows = rows_u + rows_d
        outs.append(torch.stack(rows))
        if size is not None:
            sz = [size_u[0], size_d[0]] + size_u[1:] + size_d[1:] if distill else size_u + size_d
            sizes.append(torch.stack(sz))
    if size is not None:
        return torch.stack(outs), torch.stack(sizes)
    return torch.stack(outs)


def _assert_plan_equal(got, ref, metric=None, flags=None, tol=1e-5):
    """Exact equality; with `metric` given (fp32 inputs), a difference is accepted only where it is explained
    by a near-tie (< tol) of the float64 scores, i.e. the plan is still optimal up to rounding."""
    if all(torch.equal(g, e) for g, e in zip(got, ref)) or metric is None:
        for g, e, name in zip(got, ref, ("src_idx", "dst_idx", "unm_idx")):
            assert torch.equal(g, e), name
        return
    ct, dt = flags
    m = metric.double()
    m = m / m.norm(dim=-1, keepdim=True)
    sc = m[:, ::2] @ m[:, 1::2].transpose(1, 2)
    if ct:
        sc[:, 0, :] = -math.inf
    if dt:
        sc[:, :, 0] = -math.inf
    nm = sc.max(-1).values
    src, dst, unm = got
    for b in range(m.shape[0]):
        v = nm[b, src[b]]
        assert bool((v[1:] <= v[:-1] + tol).all()), "src order"
        if unm.shape[1] and src.shape[1]:
            assert float(nm[b, unm[b]].max()) <= float(v.min()) + tol, "src/unm split"
        chosen = sc[b, src[b], dst[b]]
        assert bool((chosen >= nm[b, src[b]] - tol).all()), "dst argmax"
        assert sorted(src[b].tolist() + unm[b].tolist()) == list(range(nm.shape[1]))
    for g, e in zip(got, ref):
        assert (g != e).float().mean() < 0.05, "too many near-tie differences"


# ---------------------------------------------------------------------------------------------------------
# ToMe matching
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [11, 50, 197, 577])
@pytest.mark.parametrize("flags", TOKEN_FLAGS)
def test_tome_match_cpu_vs_reference(dtype, T, flags):
    ct, dt = flags
    g = _gen(T * 10 + ct * 2 + dt)
    metric = torch.randn(2, T, 64, generator=g, dtype=dtype)
    for r in _r_values(T, ct, dt):
        ref = R.tome_plan(metric, r, ct, dt)
        got = M.tome_match(metric, r, ct, dt)
        assert got.r == min(r, (T - ct - dt) // 2)
        _assert_plan_equal(_plan_tuple(got), ref, metric if dtype == torch.float32 else None, (ct, dt))


@pytest.mark.parametrize("T", [11, 50])
@pytest.mark.parametrize("flags", TOKEN_FLAGS)
def test_tome_match_vs_python_loops(T, flags):
    ct, dt = flags
    metric = torch.randn(2, T, 16, generator=_gen(T + 7), dtype=torch.float64)
    for r in _r_values(T, ct, dt):
        _assert_plan_equal(_plan_tuple(M.tome_match(metric, r, ct, dt)), loop_plan(metric, r, ct, dt))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tome_match_nan_follows_torch_max_and_argsort(dtype):
    # a NaN destination token makes its column NaN: torch's max picks it (first NaN) for every source row; a
    # NaN source token has node_max NaN and sorts first (NaN is the largest key)
    metric = torch.randn(2, 50, 64, generator=_gen(5), dtype=dtype)
    metric[0, 7, 3] = float("nan")   # b-side token 3 of batch 0
    metric[1, 10, 0] = float("nan")  # a-side token 5 of batch 1
    for ct, dt in TOKEN_FLAGS:
        got = _plan_tuple(M.tome_match(metric, 8, ct, dt))
        _assert_plan_equal(got, R.tome_plan(metric, 8, ct, dt))
        src, dst, _ = got
        assert torch.all(dst[0] == 3)                 # every source of batch 0 goes to the NaN column
        assert 5 in src[1].tolist()                    # the NaN source of batch 1 is merged (sorted first)


def test_tome_match_avx512_and_avx2_agree_bitwise(avx512_and_avx2):
    """fp32 matching scores 4 x 32 destinations in 512-bit registers on an AVX-512 CPU, 4 x 16 in 256-bit ones
    with IMTOK_DISABLE_AVX512=1 (read once per process): the same FMA chains, so the same plans."""
    script = (
        "import sys, torch, imtok_cuda\n"
        "g = torch.Generator().manual_seed(4)\n"
        "out = []\n"
        "for T, C in ((197, 64), (50, 20), (11, 3)):\n"
        "    m = torch.randn(3, T, C, generator=g)\n"
        "    m[1, 1:3] = m[1, 7:9]\n"
        "    for ct, dt in ((True, False), (False, True), (False, False)):\n"
        "        out.append(torch.ops.imtok_cuda.merge_tome_match(m, T // 4, ct, dt))\n"
        "torch.save(out, sys.argv[1])\n"
    )
    results = avx512_and_avx2(script)
    for p0, p1 in zip(*results):
        for a, b in zip(p0, p1):
            assert torch.equal(a, b)


def test_tome_match_ties_follow_torch_cpu_argsort():
    # one-hot metric rows make every score exactly 0 or 1: node_max is full of exact ties, and the CPU kernel
    # must order them as torch.argsort (an unstable introsort on CPU) does, and pick the first argmax
    g = _gen(3)
    for T in (11, 50, 197):
        k = torch.randint(0, 6, (2, T), generator=g)
        metric = torch.nn.functional.one_hot(k, 6).double()
        for ct, dt in TOKEN_FLAGS:
            for r in _r_values(T, ct, dt):
                _assert_plan_equal(_plan_tuple(M.tome_match(metric, r, ct, dt)), R.tome_plan(metric, r, ct, dt))
                _assert_plan_equal(_plan_tuple(M.tome_match(metric.float(), r, ct, dt)),
                                   R.tome_plan(metric.float(), r, ct, dt))


def test_tome_r_clamp_example():
    metric = torch.randn(2, 197, 64, generator=_gen(0))
    x = torch.randn(2, 197, 32, generator=_gen(1))
    merge, unmerge = M.bipartite_soft_matching(metric, 200, class_token=True)
    assert merge(x).shape == (2, 99, 32)
    assert unmerge(merge(x)).shape == (2, 197, 32)
    merge, _ = M.bipartite_soft_matching(metric, 0, class_token=True)
    assert merge is M.do_nothing


# ---------------------------------------------------------------------------------------------------------
# applying a plan
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [11, 50, 197, 577])
@pytest.mark.parametrize("flags", TOKEN_FLAGS)
def test_tome_merge_modes_vs_reference(dtype, T, flags):
    ct, dt = flags
    g = _gen(T + 100 * ct + 10 * dt)
    metric = torch.randn(2, T, 32, generator=g, dtype=dtype)
    x = torch.randn(2, T, 24, generator=g, dtype=dtype)
    size = torch.rand(2, T, 1, generator=g, dtype=dtype) * 3 + 0.5
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    for r in _r_values(T, ct, dt):
        mr, ur = R.bipartite_soft_matching(metric, r, ct, dt)
        mf, uf = M.bipartite_soft_matching(metric, r, ct, dt)
        for mode in ("sum", "mean", "amax"):
            torch.testing.assert_close(mf(x, mode=mode), mr(x, mode=mode), **tol)
        for s in (None, size):
            xr, sr = R.merge_wavg(mr, x, s)
            xf, sf = M.merge_wavg(mf, x, s)
            torch.testing.assert_close(xf, xr, **tol)
            torch.testing.assert_close(sf, sr, **tol)
        y = mr(x)
        torch.testing.assert_close(uf(y), ur(y), rtol=0, atol=0)
        if T <= 197:
            torch.testing.assert_close(M.merge_source(mf, x), R.merge_source(mr, x), rtol=0, atol=0)


@pytest.mark.parametrize("flags", TOKEN_FLAGS)
def test_tome_merge_vs_python_loops(flags):
    ct, dt = flags
    g = _gen(5)
    metric = torch.randn(2, 50, 16, generator=g, dtype=torch.float64)
    x = torch.randn(2, 50, 6, generator=g, dtype=torch.float64)
    size = torch.rand(2, 50, 1, generator=g, dtype=torch.float64) + 0.5
    for r in (1, 16, 24):
        plan = M.tome_match(metric, r, ct, dt)
        lp = loop_plan(metric, r, ct, dt)
        for mode in ("sum", "mean", "amax"):
            torch.testing.assert_close(M.merge_apply(x, plan, mode), loop_merge(x, lp, mode, dt))
        xf, sf = M.merge_wavg_plan(x, plan, size)
        xl, sl = loop_merge(x, lp, "wavg", dt, size=size)
        torch.testing.assert_close(xf, xl)
        torch.testing.assert_close(sf, sl)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_merge_low_precision(dtype):
    g = _gen(9)
    metric = torch.randn(2, 197, 64, generator=g)
    x = torch.randn(2, 197, 48, generator=g)
    plan = M.tome_match(metric, 16, True, False)
    merge_ref, _ = R.bipartite_soft_matching(metric, 16, True)
    for mode in ("sum", "mean", "amax"):
        got = M.merge_apply(x.to(dtype), plan, mode).float()
        torch.testing.assert_close(got, merge_ref(x, mode=mode), rtol=2e-2, atol=2e-2)
    xr, sr = R.merge_wavg(merge_ref, x)
    xf, sf = M.merge_wavg_plan(x.to(dtype), plan)
    torch.testing.assert_close(xf.float(), xr, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(sf.float(), sr)
    # the fused matching runs in half precision too and returns a valid plan of the right shape
    p16 = M.tome_match(metric.to(dtype), 16, True, False)
    assert p16.src_idx.shape == (2, 16) and p16.unm_idx.shape == (2, 99 - 16)
    allrows = torch.cat([p16.src_idx, p16.unm_idx], 1).sort(1)[0]
    assert torch.equal(allrows, torch.arange(99).expand(2, 99))


def test_merge_noncontiguous():
    g = _gen(11)
    metric = torch.randn(64, 2, 50, generator=g, dtype=torch.float64).permute(1, 2, 0)
    x = torch.randn(24, 50, 2, generator=g, dtype=torch.float64).permute(2, 1, 0)
    assert not metric.is_contiguous() and not x.is_contiguous()
    mr, ur = R.bipartite_soft_matching(metric, 10, True)
    mf, uf = M.bipartite_soft_matching(metric, 10, True)
    torch.testing.assert_close(mf(x), mr(x))
    torch.testing.assert_close(M.merge_wavg(mf, x)[0], R.merge_wavg(mr, x)[0])
    y = mr(x).transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(uf(y), ur(y))


def test_empty_and_tiny():
    for T in (1, 2, 3, 4):
        metric = torch.randn(2, T, 8, dtype=torch.float64)
        for ct, dt in TOKEN_FLAGS:
            merge, _ = M.bipartite_soft_matching(metric, 5, ct, dt)
            mr, _ = R.bipartite_soft_matching(metric, 5, ct, dt)
            x = torch.randn(2, T, 3, dtype=torch.float64)
            torch.testing.assert_close(merge(x), mr(x))
    # empty batch and zero channels
    p = M.tome_match(torch.randn(0, 10, 4), 3)
    assert p.src_idx.shape == (0, 3)
    plan = M.tome_match(torch.randn(2, 10, 4), 3)
    assert M.merge_apply(torch.randn(2, 10, 0), plan).shape == (2, 7, 0)


# ---------------------------------------------------------------------------------------------------------
# tomesd
# ---------------------------------------------------------------------------------------------------------
GRIDS = [(16, 16, 2, 2), (9, 13, 2, 3), (7, 5, 2, 2), (5, 7, 3, 2), (10, 10, 4, 4)]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("no_rand", [False, True])
def test_random2d_vs_reference(grid, no_rand):
    h, w, sx, sy = grid
    N = h * w
    g = _gen(h * 100 + w)
    metric = torch.randn(2, N, 16, generator=g, dtype=torch.float64)
    x = torch.randn(2, N, 8, generator=g, dtype=torch.float64)
    n_src = N - (h // sy) * (w // sx)
    for r in sorted({1, 7, n_src, n_src + 10}):
        g1, g2 = _gen(r), _gen(r)
        mr, ur = R.bipartite_soft_matching_random2d(metric, w, h, sx, sy, r, no_rand, g1)
        mf, uf = M.bipartite_soft_matching_random2d(metric, w, h, sx, sy, r, no_rand, g2)
        assert torch.equal(g1.get_state(), g2.get_state())
        for mode in ("mean", "sum", "amax"):
            torch.testing.assert_close(mf(x, mode=mode), mr(x, mode=mode), rtol=1e-12, atol=1e-12)
        y = mr(x)
        torch.testing.assert_close(uf(y), ur(y), rtol=0, atol=0)


def test_random2d_split_follows_torch_cpu_argsort():
    # torch's CPU argsort of the -1/0 buffer is an unstable introsort: the kernel reproduces its exact order
    for (h, w, sx, sy) in [(64, 64, 2, 2), (32, 48, 2, 2), (17, 23, 3, 2), (4, 4, 2, 2), (5, 3, 2, 2)]:
        rand_idx = R.random2d_rand_idx(h, w, sx, sy, False, _gen(h + w))
        a, b = M.random2d_split(rand_idx, h, w, sx, sy)
        ar, br = R.random2d_split(rand_idx, h, w, sx, sy)
        assert torch.equal(a, ar) and torch.equal(b, br)


def test_random2d_sd_latent_fp32():
    # SD 64x64 latent at stride 2, ratio 0.5; fp64 metric (3072 x 1024 fp32 scores hold near-ties that BLAS
    # rounding orders either way), fp32 features
    g = _gen(1)
    metric = torch.randn(1, 4096, 64, generator=g, dtype=torch.float64)
    x = torch.randn(1, 4096, 32, generator=g)
    r = int(4096 * 0.5)
    mr, ur = R.bipartite_soft_matching_random2d(metric, 64, 64, 2, 2, r, False, _gen(2))
    mf, uf = M.bipartite_soft_matching_random2d(metric, 64, 64, 2, 2, r, False, _gen(2))
    torch.testing.assert_close(mf(x), mr(x))
    torch.testing.assert_close(uf(mr(x)), ur(mr(x)))


def test_random2d_vs_python_loops():
    h, w, sx, sy = 9, 13, 2, 3
    metric = torch.randn(2, h * w, 8, generator=_gen(4), dtype=torch.float64)
    x = torch.randn(2, h * w, 5, generator=_gen(5), dtype=torch.float64)
    rand_idx = R.random2d_rand_idx(h, w, sx, sy, False, _gen(6))
    a, b = M.random2d_split(rand_idx, h, w, sx, sy)
    # the split is a partition: destinations are one per cell at the drawn offset, the rest are sources
    hsy, wsx = h // sy, w // sx
    want_dst = sorted((cy * sy + int(rand_idx[cy, cx]) // sx) * w + cx * sx + int(rand_idx[cy, cx]) % sx
                      for cy in range(hsy) for cx in range(wsx))
    assert sorted(b.tolist()) == want_dst
    assert sorted(a.tolist() + b.tolist()) == list(range(h * w))
    for r in (1, 20, 200):
        plan = M.random2d_match(metric, a, b, r)
        rr = min(r, a.numel())
        lp = loop_plan(metric, rr, False, False, a.tolist(), b.tolist())
        _assert_plan_equal(_plan_tuple(plan), lp)
        torch.testing.assert_close(M.merge_apply(x, plan, "mean"),
                                   loop_merge(x, lp, "mean", False, a.tolist(), b.tolist()))


# ---------------------------------------------------------------------------------------------------------
# emulated CUDA kernels (csrc/merge/merge_kernels.cuh under the shim)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.emulated
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [11, 50])
@pytest.mark.parametrize("flags", TOKEN_FLAGS)
def test_emulated_tome_match_and_apply(dtype, T, flags):
    ct, dt = flags
    g = _gen(T + 1000)
    metric = torch.randn(2, T, 40, generator=g, dtype=dtype)
    x = torch.randn(2, T, 40, generator=g, dtype=dtype)
    size = torch.rand(2, T, 1, generator=g, dtype=dtype) + 0.5
    r = min(7, (T - ct - dt) // 2)
    plan = emu_ops.merge_tome_match(metric, r, ct, dt)
    _assert_plan_equal(plan, R.tome_plan(metric, r, ct, dt), metric if dtype == torch.float32 else None, (ct, dt))
    cpu = M.tome_match(metric, r, ct, dt)
    args = (cpu.src_idx, cpu.dst_idx, cpu.unm_idx, None, None)
    for mode in ("sum", "mean", "amax"):
        torch.testing.assert_close(emu_ops.merge_apply(x, *args, mode, dt), M.merge_apply(x, cpu, mode))
        gout = torch.randn(M.merge_apply(x, cpu, mode).shape, generator=g, dtype=dtype)
        out = M.merge_apply(x, cpu, mode)
        torch.testing.assert_close(emu_ops.merge_apply_backward(gout, x, out, *args, mode, dt),
                                   torch.ops.imtok_cuda.merge_apply_backward(gout, x, out, *args, mode, dt))
    ye, se = emu_ops.merge_wavg(x, size, *args, dt)
    yc, sc = M.merge_wavg_plan(x, cpu, size)
    torch.testing.assert_close(ye, yc)
    torch.testing.assert_close(se, sc)
    gy, gs = torch.randn(yc.shape, generator=g, dtype=dtype), torch.randn(sc.shape, generator=g, dtype=dtype)
    be = emu_ops.merge_wavg_backward(gy, gs, x, size, yc, sc, *args, dt)
    bc = torch.ops.imtok_cuda.merge_wavg_backward(gy, gs, x, size, yc, sc, *args, dt)
    torch.testing.assert_close(be[0], bc[0])
    torch.testing.assert_close(be[1], bc[1])
    y = M.merge_apply(x, cpu._replace(distill_token=False), "mean")
    torch.testing.assert_close(emu_ops.merge_unmerge(y, *args), M.merge_unmerge(y, cpu))


@pytest.mark.emulated
def test_emulated_random2d():
    h, w, sx, sy = 7, 9, 2, 2
    metric = torch.randn(2, h * w, 24, generator=_gen(8), dtype=torch.float64)
    x = torch.randn(2, h * w, 24, generator=_gen(9), dtype=torch.float64)
    rand_idx = R.random2d_rand_idx(h, w, sx, sy, False, _gen(10))
    a, b = M.random2d_split(rand_idx, h, w, sx, sy)
    for r in (1, 12, 100):
        pe = emu_ops.merge_random2d_match(metric, a, b, r)
        pc = M.random2d_match(metric, a, b, r)
        _assert_plan_equal(pe, _plan_tuple(pc))
        args = (*_plan_tuple(pc), a, b)
        torch.testing.assert_close(emu_ops.merge_apply(x, *args, "mean", False), M.merge_apply(x, pc, "mean"))
        y = M.merge_apply(x, pc, "mean")
        torch.testing.assert_close(emu_ops.merge_unmerge(y, *args), M.merge_unmerge(y, pc))


@pytest.mark.emulated
def test_emulated_low_precision():
    metric = torch.randn(2, 50, 32, generator=_gen(12))
    x = torch.randn(2, 50, 32, generator=_gen(13))
    plan = M.tome_match(metric, 10, True)
    args = _plan_tuple(plan) + (None, None)
    for dtype in (torch.float16, torch.bfloat16):
        xe = x.to(dtype)
        torch.testing.assert_close(emu_ops.merge_apply(xe, *args, "mean", False), M.merge_apply(xe, plan, "mean"))
        ye, se = emu_ops.merge_wavg(xe, None, *args, False)
        yc, sc = M.merge_wavg_plan(xe, plan)
        torch.testing.assert_close(ye, yc)
        torch.testing.assert_close(se, sc)


# ---------------------------------------------------------------------------------------------------------
# autograd, opcheck, compile
# ---------------------------------------------------------------------------------------------------------
def _small_plan(distill=False, class_token=True):
    metric = torch.randn(2, 13, 8, generator=_gen(20), dtype=torch.float64)
    return M.tome_match(metric, 4, class_token, distill)


@pytest.mark.parametrize("mode", ["sum", "mean", "amax"])
@pytest.mark.parametrize("distill", [False, True])
def test_gradcheck_apply(mode, distill):
    plan = _small_plan(distill)
    x = torch.randn(2, 13, 5, generator=_gen(21), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: M.merge_apply(t, plan, mode), (x,))


def test_gradcheck_wavg_and_unmerge():
    plan = _small_plan(True)
    x = torch.randn(2, 13, 5, generator=_gen(22), dtype=torch.float64, requires_grad=True)
    size = (torch.rand(2, 13, 1, generator=_gen(23), dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, s: M.merge_wavg_plan(a, plan, s), (x, size))
    assert torch.autograd.gradcheck(lambda a: M.merge_wavg_plan(a, plan, None), (x,))
    plan = _small_plan(False)
    y = torch.randn(2, 9, 5, generator=_gen(24), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: M.merge_unmerge(t, plan), (y,))


def test_gradients_match_reference():
    g = _gen(25)
    metric = torch.randn(2, 50, 16, generator=g, dtype=torch.float64)
    x = torch.randn(2, 50, 8, generator=g, dtype=torch.float64)
    size = torch.rand(2, 50, 1, generator=g, dtype=torch.float64) + 0.5
    mr, ur = R.bipartite_soft_matching(metric, 12, True)
    mf, uf = M.bipartite_soft_matching(metric, 12, True)
    for fn_r, fn_f in [(lambda a, s: R.merge_wavg(mr, a, s), lambda a, s: M.merge_wavg(mf, a, s))]:
        xa, sa = x.clone().requires_grad_(), size.clone().requires_grad_()
        xb, sb = x.clone().requires_grad_(), size.clone().requires_grad_()
        o1, z1 = fn_r(xa, sa)
        o2, z2 = fn_f(xb, sb)
        w = torch.randn(o1.shape, generator=g, dtype=torch.float64)
        ((o1 * w).sum() + z1.sum() * 0.3).backward()
        ((o2 * w).sum() + z2.sum() * 0.3).backward()
        torch.testing.assert_close(xb.grad, xa.grad)
        torch.testing.assert_close(sb.grad, sa.grad)


@pytest.mark.emulated
def test_emulated_gradcheck():
    plan = _small_plan(False)
    args = _plan_tuple(plan) + (None, None)
    x = torch.randn(2, 13, 5, generator=_gen(26), dtype=torch.float64)
    out = emu_ops.merge_apply(x, *args, "mean", False)
    g = torch.randn(out.shape, generator=_gen(27), dtype=torch.float64)
    gx = emu_ops.merge_apply_backward(g, x, out, *args, "mean", False)
    xr = x.clone().requires_grad_()
    R_merge, _ = R.bipartite_soft_matching(torch.randn(2, 13, 8, generator=_gen(20), dtype=torch.float64), 4, True)
    (R_merge(xr, mode="mean") * g).sum().backward()
    torch.testing.assert_close(gx, xr.grad)


def test_opcheck():
    g = _gen(30)
    metric = torch.randn(2, 21, 8, generator=g, dtype=torch.float64)
    x = torch.randn(2, 21, 6, generator=g, dtype=torch.float64, requires_grad=True)
    size = (torch.rand(2, 21, 1, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    ops = torch.ops.imtok_cuda
    torch.library.opcheck(ops.merge_tome_match, (metric, 5, True, False))
    plan = M.tome_match(metric, 5, True, False)
    args = _plan_tuple(plan) + (None, None)
    for mode in ("sum", "mean", "amax"):
        torch.library.opcheck(ops.merge_apply, (x, *args, mode, False))
    torch.library.opcheck(ops.merge_wavg, (x, size, *args, True))
    torch.library.opcheck(ops.merge_wavg, (x, None, *args, False))
    y = M.merge_apply(x.detach(), plan, "mean").requires_grad_()
    torch.library.opcheck(ops.merge_unmerge, (y, *args))
    out = M.merge_apply(x.detach(), plan, "amax")
    torch.library.opcheck(ops.merge_apply_backward, (torch.randn_like(out), x.detach(), out, *args, "amax", False))
    ri = R.random2d_rand_idx(5, 7, 2, 2, False, _gen(31))
    torch.library.opcheck(ops.merge_random2d_split, (ri, 5, 7, 2, 2))
    a, b = M.random2d_split(ri, 5, 7, 2, 2)
    torch.library.opcheck(ops.merge_random2d_match, (torch.randn(2, 35, 4, dtype=torch.float64), a, b, 6))


def test_torch_compile_fullgraph():
    def step(metric, x):
        plan = M.tome_match(metric, 8, True, False)
        y, s = M.merge_wavg_plan(x, plan)
        return M.merge_unmerge(y, plan), s

    metric = torch.randn(2, 33, 8, generator=_gen(40))
    x = torch.randn(2, 33, 16, generator=_gen(41))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    a = compiled(metric, x)
    b = step(metric, x)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------
def test_bad_input():
    ops = torch.ops.imtok_cuda
    with pytest.raises(ValueError, match="metric"):
        ops.merge_tome_match(torch.randn(10, 4), 2)
    with pytest.raises(TypeError, match="metric"):
        ops.merge_tome_match(torch.ones(1, 10, 4, dtype=torch.int64), 2)
    plan = M.tome_match(torch.randn(2, 10, 4), 2)
    args = _plan_tuple(plan) + (None, None)
    with pytest.raises(ValueError, match="mode"):
        ops.merge_apply(torch.randn(2, 10, 3), *args, "max", False)
    with pytest.raises(ValueError, match="x"):
        ops.merge_apply(torch.randn(2, 12, 3), *args, "sum", False)
    with pytest.raises(ValueError, match="x.shape\\[0\\]"):
        ops.merge_apply(torch.randn(3, 10, 3), *args, "sum", False)
    bad = plan.dst_idx.clone()
    bad[0, 0] = 99
    with pytest.raises(ValueError, match="dst_idx"):
        ops.merge_apply(torch.randn(2, 10, 3), plan.src_idx, bad, plan.unm_idx, None, None, "sum", False)
    with pytest.raises(TypeError, match="src_idx"):
        ops.merge_apply(torch.randn(2, 10, 3), plan.src_idx.int(), plan.dst_idx, plan.unm_idx, None, None, "sum",
                        False)
    with pytest.raises(ValueError, match="size"):
        ops.merge_wavg(torch.randn(2, 10, 3), torch.ones(2, 10, 2), *args, False)
    with pytest.raises(ValueError, match="a_idx"):
        ops.merge_apply(torch.randn(2, 10, 3), *_plan_tuple(plan), torch.arange(5), None, "sum", False)
    with pytest.raises(ValueError, match="rand_idx"):
        ops.merge_random2d_split(torch.full((2, 2, 1), 7), 4, 4, 2, 2)
    with pytest.raises(ValueError, match="rand_idx"):
        ops.merge_random2d_split(torch.zeros(3, 2, 1, dtype=torch.int64), 4, 4, 2, 2)
    with pytest.raises(ValueError, match="metric"):
        M.bipartite_soft_matching_random2d(torch.randn(1, 15, 4), 4, 4, 2, 2, 3)
    with pytest.raises(ValueError, match="y"):
        ops.merge_unmerge(torch.randn(2, 30, 3), *args)


# ---------------------------------------------------------------------------------------------------------
# real GPU (skipped here)
# ---------------------------------------------------------------------------------------------------------
@cuda
@needs_gpu
@pytest.mark.parametrize("T", [197, 577])
def test_cuda_matches_reference(T):
    g = _gen(50)
    metric = torch.randn(4, T, 64, generator=g, dtype=torch.float64)
    x = torch.randn(4, T, 96, generator=g, dtype=torch.float64)
    mr, ur = R.bipartite_soft_matching(metric, 16, True)
    mf, uf = M.bipartite_soft_matching(metric.cuda(), 16, True)
    torch.testing.assert_close(mf(x.cuda()).cpu(), mr(x))
    torch.testing.assert_close(M.merge_wavg(mf, x.cuda())[0].cpu(), R.merge_wavg(mr, x)[0])
    torch.testing.assert_close(uf(mr(x).cuda()).cpu(), ur(mr(x)))


@cuda
@needs_gpu
def test_cuda_random2d_matches_reference():
    metric = torch.randn(2, 4096, 64, device="cuda")
    x = torch.randn(2, 4096, 32, device="cuda")
    g1 = torch.Generator(device="cuda").manual_seed(0)
    g2 = torch.Generator(device="cuda").manual_seed(0)
    mr, ur = R.bipartite_soft_matching_random2d(metric, 64, 64, 2, 2, 2048, False, g1)
    mf, uf = M.bipartite_soft_matching_random2d(metric, 64, 64, 2, 2, 2048, False, g2)
    torch.testing.assert_close(mf(x), mr(x))
    torch.testing.assert_close(uf(mr(x)), ur(mr(x)))
