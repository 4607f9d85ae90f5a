"""prune family: EViT keep-and-fuse, GTP-ViT graph / propagation / graph selection, FasterVLM top-k mask and packed
gather. Each op against the reference (the official code's conventions), against an independent loop
implementation, and its CUDA kernel run under the emulation shim ("emulated") against both."""
import math

import pytest
import torch

from imtok_cuda import prune as P
from imtok_cuda.reference import prune as R

OPS = torch.ops.imtok_cuda
SIZES = [11, 50, 197, 577]


def _tol(dtype):
    return {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
            torch.float16: dict(rtol=1e-2, atol=1e-2), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}[dtype]


def _scores(B, M, dtype, scale=1.0):
    """Distinct scores (no ties, even in half precision): consecutive positive values of the dtype from `scale` on
    (consecutive bit patterns), randomly permuted per row."""
    perm = torch.stack([torch.randperm(M) for _ in range(B)])
    if dtype in (torch.float16, torch.bfloat16):
        base = torch.tensor(scale, dtype=dtype).view(torch.int16).to(torch.int64)
        return (base + perm).to(torch.int16).view(dtype)
    return perm.to(torch.float64).div(M).mul(scale).to(dtype)


# ---- independent loop implementations -------------------------------------------------------------------
def loop_evit(x, s, left):
    B, N, C = x.shape
    outs, idxs = [], []
    for b in range(B):
        order = sorted(range(N - 1), key=lambda i: (-float(s[b, i]), i))
        kept = order[:left]
        fused = torch.zeros(C, dtype=torch.float64)
        for i in range(N - 1):
            if i not in set(kept):
                fused += x[b, 1 + i].double() * float(s[b, i])
        rows = [x[b, 0].double()] + [x[b, 1 + i].double() for i in kept] + [fused]
        outs.append(torch.stack(rows))
        idxs.append(torch.tensor(kept))
    return torch.stack(outs), torch.stack(idxs)


def loop_topk_mask(s, k):
    B, N = s.shape
    m = torch.zeros(B, N, dtype=torch.bool)
    for b in range(B):
        for i in sorted(range(N), key=lambda i: (-float(s[b, i]), i))[:k]:
            m[b, i] = True
    return m


def loop_gather_packed(x, mask):
    rows, cu = [], [0]
    for b in range(x.shape[0]):
        for i in range(x.shape[1]):
            if mask[b, i]:
                rows.append(x[b, i])
        cu.append(len(rows))
    packed = torch.stack(rows) if rows else x.new_zeros(0, x.shape[2])
    return packed, torch.tensor(cu, dtype=torch.int32)


def loop_graph(x, graph_type, K):
    """Dense normalized graph built row by row: neighbour sets, then 1/sqrt(deg_i deg_j)."""
    B, N, C = x.shape
    M = N - 1
    side = int(math.isqrt(M))
    G = torch.zeros(B, M, M, dtype=torch.float64)
    for b in range(B):
        xi = x[b, 1:].double()
        xn = xi / xi.norm(dim=-1, keepdim=True)
        nbrs = []
        for r in range(M):
            s = set()
            if graph_type in ("spatial", "mixed"):
                y0, x0 = divmod(r, side)
                for j in range(M):
                    y1, x1 = divmod(j, side)
                    if j != r and abs(y0 - y1) <= 1 and abs(x0 - x1) <= 1:
                        s.add(j)
            if graph_type in ("semantic", "mixed"):
                cos = (xn @ xn[r]).tolist()
                others = sorted((j for j in range(M) if j != r), key=lambda j: -cos[j])
                s.update(others[:K])
            nbrs.append(s)
        for r in range(M):
            for j in nbrs[r]:
                G[b, r, j] = 1.0 / math.sqrt(len(nbrs[r]) * len(nbrs[j]))
    return G


def loop_propagate(x, G, kept, prop, alpha):
    B, N, C = x.shape
    out = []
    for b in range(B):
        rows = [x[b, 0].double()]
        for t in kept[b].tolist():
            v = x[b, t].double().clone()
            for p in prop[b].tolist():
                w = float(G[b, t - 1, p - 1])
                if w != 0.0:
                    v += alpha * w * x[b, p].double()
            rows.append(v)
        out.append(torch.stack(rows))
    return torch.stack(out)


def _dense(nbr_idx, nbr_w, n=None):
    return R.neighbors_to_dense(nbr_idx, nbr_w.double(), n)


def _gtp_inputs(B, N, C, P_, dtype, graph_type="mixed", K=8):
    x = torch.randn(B, N, C, dtype=dtype)
    attn = torch.randn(B, 3, N, N, dtype=torch.float64).softmax(-1)
    kept, prop = R.gtp_select(attn, P_)
    return x, kept, prop


# ---- EViT -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N", SIZES)
def test_evit_matches_reference_and_loop(dtype, N):
    B, C = 2, 24
    x = torch.randn(B, N, C, dtype=dtype)
    s = torch.rand(B, N - 1, dtype=dtype)
    for keep in (0.3, 0.7, 0.9):
        left = R.evit_left_tokens(N, keep)
        if left == N - 1:
            continue
        ro, ri = R.evit_keep_fuse(x, s, left)
        o, i = P.evit_keep_fuse(x, s, left)
        assert torch.equal(i, ri)  # exact order: descending score
        torch.testing.assert_close(o, ro, **_tol(dtype))
        lo, li = loop_evit(x, s, left)
        assert torch.equal(i, li)
        torch.testing.assert_close(o.double(), lo, **_tol(dtype))
        assert o.shape == (B, left + 2, C)


# emulated CUDA kernels (csrc/prune/prune_kernels.cuh under the shim)
@pytest.mark.parametrize("N", SIZES)
def test_evit_emulated_cuda_matches_reference(emu, N):
    B, C = 2, 40
    x = torch.randn(B, N, C, dtype=torch.float64)
    s = torch.rand(B, N - 1, dtype=torch.float64)
    left = R.evit_left_tokens(N, 0.7)
    ro, ri = R.evit_keep_fuse(x, s, left)
    eo, ei = emu.prune_evit_keep_fuse(x, s, left, True)
    assert torch.equal(ei, ri)
    torch.testing.assert_close(eo, ro, **_tol(torch.float64))
    eo2, _ = emu.prune_evit_keep_fuse(x, s, left, False)
    torch.testing.assert_close(eo2, R.evit_keep_fuse(x, s, left, fuse=False)[0], **_tol(torch.float64))


def test_evit_emulated_multi_chunk_and_backward(emu):
    B, N, C = 2, 30, 300  # 3 channel chunks of 128
    x = torch.randn(B, N, C, dtype=torch.float64)
    s = torch.rand(B, N - 1, dtype=torch.float64)
    o, i = emu.prune_evit_keep_fuse(x, s, 20, True)
    ro, ri = R.evit_keep_fuse(x, s, 20)
    assert torch.equal(i, ri)
    torch.testing.assert_close(o, ro)
    g = torch.randn_like(o)
    for fuse in (True, False):
        gg = g if fuse else g[:, :-1].contiguous()
        cx, ca = OPS.prune_evit_keep_fuse_backward(gg, x, s, i, fuse)
        ex, ea = emu.prune_evit_keep_fuse_backward(gg, x, s, i, fuse)
        torch.testing.assert_close(ex, cx)
        torch.testing.assert_close(ea, ca)


def test_evit_noop_and_tiny():
    x = torch.randn(2, 5, 3)
    s = torch.rand(2, 4)
    out, idx = P.evit_keep_fuse(x, s, 4)
    assert out is x and idx is None  # official no-op when left == N - 1
    assert R.evit_keep_fuse(x, s, 4)[0] is x
    o, i = P.evit_keep_fuse(x, s, 1)
    ro, ri = R.evit_keep_fuse(x, s, 1)
    torch.testing.assert_close(o, ro)
    assert torch.equal(i, ri)
    # N = 2 (one image token): the op itself at left = N - 1 gives [cls, token, zero fused]
    x2, s2 = torch.randn(3, 2, 4), torch.rand(3, 1)
    o2, i2 = OPS.prune_evit_keep_fuse(x2, s2, 1, True)
    assert torch.equal(o2[:, :2], x2) and torch.equal(o2[:, 2], torch.zeros(3, 4)) and torch.equal(i2, torch.zeros(3, 1, dtype=torch.long))
    # empty batch, zero channels
    o3, i3 = OPS.prune_evit_keep_fuse(torch.randn(0, 7, 4), torch.rand(0, 6), 3, True)
    assert o3.shape == (0, 5, 4) and i3.shape == (0, 3)
    o4, i4 = OPS.prune_evit_keep_fuse(torch.randn(2, 7, 0), s := torch.rand(2, 6), 3, True)
    assert o4.shape == (2, 5, 0) and torch.equal(i4, torch.topk(s, 3).indices)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_evit_half_precision(dtype, emu):
    B, N, C = 2, 197, 32
    x = torch.randn(B, N, C).to(dtype)
    s = _scores(B, N - 1, dtype, scale=0.01)
    left = R.evit_left_tokens(N, 0.7)
    ro, ri = R.evit_keep_fuse(x.float(), s.float(), left)
    for impl in (OPS, emu):
        o, i = impl.prune_evit_keep_fuse(x, s, left, True)
        assert o.dtype == dtype and torch.equal(i, ri)
        torch.testing.assert_close(o.float(), ro, **_tol(dtype))


def test_evit_noncontiguous():
    B, N, C = 3, 50, 16
    x = torch.randn(B, C, N, dtype=torch.float64).transpose(1, 2)
    s = torch.rand(B, 2 * (N - 1), dtype=torch.float64)[:, ::2]
    o, i = P.evit_keep_fuse(x, s, 20)
    ro, ri = R.evit_keep_fuse(x.contiguous(), s.contiguous(), 20)
    assert torch.equal(i, ri)
    torch.testing.assert_close(o, ro)


def test_evit_gradcheck_and_reference_grads():
    B, N, C = 2, 11, 4
    x = torch.randn(B, N, C, dtype=torch.float64, requires_grad=True)
    s = _scores(B, N - 1, torch.float64).requires_grad_(True)
    for fuse in (True, False):
        assert torch.autograd.gradcheck(lambda a, b: P.evit_keep_fuse(a, b, 6, fuse)[0], (x, s))
    g = torch.randn(B, 8, C, dtype=torch.float64)
    gx, gs = torch.autograd.grad(P.evit_keep_fuse(x, s, 6)[0], (x, s), g)
    rx, rs = torch.autograd.grad(R.evit_keep_fuse(x, s, 6)[0], (x, s), g)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gs, rs)


# ---- FasterVLM ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N", [11, 50, 197, 576])
def test_topk_mask_matches_reference_and_loop(dtype, N, emu):
    B = 3
    s = _scores(B, N, dtype) if dtype in (torch.float16, torch.bfloat16) else torch.rand(B, N, dtype=dtype)
    for k in sorted({0, 1, N // 4, N - 1, N}):
        m = P.topk_mask(s, k)
        assert torch.equal(m, R.topk_mask(s, k))
        assert torch.equal(m, loop_topk_mask(s, k))
        assert torch.equal(emu.prune_topk_mask(s, k), m)


def test_topk_mask_nan_and_ties(emu):
    s = torch.tensor([[0.5, float("nan"), 0.5, 0.1, 0.5]])
    for impl in (OPS, emu):
        assert impl.prune_topk_mask(s, 1).tolist() == [[False, True, False, False, False]]  # NaN is largest
        assert impl.prune_topk_mask(s, 3).tolist() == [[True, True, True, False, False]]  # ties: lower index


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N", [11, 50, 197, 576])
def test_gather_packed_matches_reference_and_loop(dtype, N, emu):
    B, C = 3, 20
    x = torch.randn(B, N, C).to(dtype)
    mask = torch.rand(B, N) < torch.tensor([[0.1], [0.5], [0.9]])  # different kept counts per row
    mask[0] = False if N == 11 else mask[0]  # an empty row
    rp, rc = R.gather_packed(x, mask)
    lp, lc = loop_gather_packed(x, mask)
    for impl in (OPS, emu):
        p, cu = impl.prune_gather_packed(x, mask)
        assert cu.dtype == torch.int32 and torch.equal(cu, rc) and torch.equal(cu, lc)
        assert torch.equal(p, rp) and torch.equal(p, lp)  # a gather: exact


def test_gather_packed_noncontiguous_and_empty(emu):
    x = torch.randn(2, 8, 30).transpose(1, 2)  # [2, 30, 8] non-contiguous
    mask = torch.rand(2, 30) < 0.5
    for impl in (OPS, emu):
        p, cu = impl.prune_gather_packed(x, mask)
        assert torch.equal(p, x[mask])
        p0, cu0 = impl.prune_gather_packed(torch.randn(0, 4, 3), torch.zeros(0, 4, dtype=torch.bool))
        assert p0.shape == (0, 3) and cu0.tolist() == [0]
        p1, cu1 = impl.prune_gather_packed(x, torch.zeros(2, 30, dtype=torch.bool))
        assert p1.shape == (0, 8) and cu1.tolist() == [0, 0, 0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N", SIZES)
def test_cls_attn_matches_reference_and_loop(dtype, N, emu):
    B, H, D = 2, 3, 16
    q = torch.randn(B, H, N, D, dtype=dtype)
    k = torch.randn(B, H, N, D, dtype=dtype)
    scale = D ** -0.5
    ref = R.cls_attn_from_qk(q, k, scale)
    full = R.fastervlm_scores(((q * scale) @ k.transpose(-2, -1)).softmax(-1))  # the whole attention map
    loop = torch.zeros(B, N - 1, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            logits = [float((q[b, h, 0].double() * scale) @ k[b, h, j].double()) for j in range(N)]
            mx = max(logits)
            e = [math.exp(v - mx) for v in logits]
            for j in range(1, N):
                loop[b, j - 1] += e[j] / sum(e) / H
    impls = [OPS, emu] if N <= 197 else [OPS]
    for impl in impls:
        out = impl.prune_cls_attn(q, k, scale)
        torch.testing.assert_close(out, ref, **_tol(dtype))
        torch.testing.assert_close(out, full, **_tol(dtype))
        torch.testing.assert_close(out.double(), loop, **_tol(dtype))
    torch.testing.assert_close(P.cls_attn(q[:, :, :1], k, scale), ref, **_tol(dtype))  # only the CLS query


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cls_attn_half_and_noncontiguous(dtype, emu):
    B, H, N, D = 2, 4, 50, 32
    qkv = torch.randn(B, N, 3, H, D).to(dtype).permute(2, 0, 3, 1, 4)  # timm layout: non-contiguous q, k
    q, k = qkv[0], qkv[1]
    ref = R.cls_attn_from_qk(q.float(), k.float(), D ** -0.5)
    for impl in (OPS, emu):
        out = impl.prune_cls_attn(q, k, D ** -0.5)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, **_tol(dtype))


def test_cls_attn_opcheck_and_bad_input():
    q = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    k = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    torch.library.opcheck(OPS.prune_cls_attn.default, (q, k, 0.3))
    with pytest.raises(ValueError, match="k.shape"):
        OPS.prune_cls_attn(q, k[:, :2], 0.3)
    with pytest.raises(TypeError, match="k must have the same dtype|q and k"):
        OPS.prune_cls_attn(q, k.float(), 0.3)
    with pytest.raises(ValueError, match="q must have 4"):
        OPS.prune_cls_attn(q[0], k, 0.3)


def test_fastervlm_prune_keeps_spatial_order():
    B, N, C, k = 2, 576, 16, 144
    feats = torch.randn(B, N, C)
    attn = torch.rand(B, 4, N + 1, N + 1).softmax(-1)
    scores = R.fastervlm_scores(attn)
    out, mask = P.fastervlm_prune(feats, scores, k)
    rout, rmask = R.fastervlm_prune(feats, scores, k)
    assert torch.equal(mask, rmask) and torch.equal(out, rout)
    idx = mask[0].nonzero().squeeze(1)
    assert torch.all(idx[1:] > idx[:-1])  # spatial order
    p, cu = P.fastervlm_prune(feats, scores, k, packed=True)
    assert p.shape == (B * k, C) and cu.tolist() == [0, k, 2 * k]


# ---- GTP-ViT: graph -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N", SIZES)
@pytest.mark.parametrize("graph_type", ["spatial", "semantic", "mixed"])
def test_gtp_graph_matches_reference_and_loop(dtype, N, graph_type):
    if graph_type != "semantic" and math.isqrt(N - 1) ** 2 != N - 1:
        pytest.skip("spatial graphs need a square grid")
    B, C = 2, 24
    x = torch.randn(B, N, C, dtype=dtype)
    ni, nw = P.gtp_graph(x, graph_type, 8)
    assert ni.shape == (B, N - 1, {"spatial": 8, "semantic": 8, "mixed": 16}[graph_type])
    G = _dense(ni, nw)
    torch.testing.assert_close(G, R.gtp_build_graph(x.double(), graph_type, 8), **_tol(dtype))
    if N <= 197:  # the python loop is slow at 577
        torch.testing.assert_close(G, loop_graph(x, graph_type, 8), **_tol(dtype))
    else:
        torch.testing.assert_close(G, R.gtp_build_graph(x, graph_type, 8).double(), **_tol(dtype))


@pytest.mark.parametrize("graph_type", ["spatial", "semantic", "mixed"])
def test_gtp_graph_emulated_cuda_matches_reference(emu, graph_type):
    B, N, C = 2, 50, 40
    x = torch.randn(B, N, C, dtype=torch.float64)
    ni, nw = emu.prune_gtp_graph(x, graph_type, 5)
    ci, cw = OPS.prune_gtp_graph(x, graph_type, 5)
    torch.testing.assert_close(_dense(ni, nw), R.gtp_build_graph(x, graph_type, 5))
    torch.testing.assert_close(_dense(ni, nw), _dense(ci, cw))


def test_gtp_graph_spatial_grid_emulated_577(emu):
    x = torch.randn(1, 577, 4)
    ni, nw = emu.prune_gtp_graph(x, "spatial", 8)
    assert torch.equal(ni, OPS.prune_gtp_graph(x, "spatial", 8)[0])
    torch.testing.assert_close(_dense(ni, nw), R.gtp_build_graph(x, "spatial").double())
    assert (ni >= 0).sum(-1)[0, :3].tolist() == [3, 5, 5]  # corner, edge


# ---- GTP-ViT: propagation and graph selection --------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N", SIZES)
def test_gtp_propagate_matches_reference_and_loop(dtype, N):
    B, C = 2, 24
    graph_type = "mixed" if math.isqrt(N - 1) ** 2 == N - 1 else "semantic"
    Pn = max(1, (N - 1) // 5)
    x, kept, prop = _gtp_inputs(B, N, C, Pn, dtype)
    ni, nw = P.gtp_graph(x, graph_type, 8)
    G = R.gtp_build_graph(x, graph_type, 8)
    ts = torch.rand(B, N, dtype=dtype) + 0.5
    ro, rg, rts = R.gtp_propagate(x, G, kept, prop, 0.1, ts)
    o, (gi, gw), ots = P.gtp_propagate(x, kept, prop, ni, nw, 0.1, ts)
    torch.testing.assert_close(o, ro, **_tol(dtype))
    torch.testing.assert_close(ots, rts, **_tol(dtype))
    torch.testing.assert_close(_dense(gi, gw), rg.double(), **_tol(dtype))
    if N <= 197:
        torch.testing.assert_close(o.double(), loop_propagate(x, G, kept, prop, 0.1), **_tol(dtype))
    # one more layer on the selected graph equals the reference on the dense selected graph
    attn2 = torch.randn(B, 3, o.shape[1], o.shape[1], dtype=torch.float64).softmax(-1)
    k2, p2 = R.gtp_select(attn2, Pn)
    ro2, rg2, _ = R.gtp_propagate(ro, rg, k2, p2, 0.1)
    o2, (gi2, gw2), _ = P.gtp_propagate(o, k2, p2, gi, gw, 0.1)
    torch.testing.assert_close(o2, ro2, **_tol(dtype))
    torch.testing.assert_close(_dense(gi2, gw2), rg2.double(), **_tol(dtype))


@pytest.mark.parametrize("N", [11, 50, 197])
def test_gtp_propagate_emulated_cuda_matches_reference(emu, N):
    B, C = 2, 24
    x, kept, prop = _gtp_inputs(B, N, C, max(1, (N - 1) // 4), torch.float64)
    ni, nw = OPS.prune_gtp_graph(x, "semantic", 6)
    G = R.gtp_build_graph(x, "semantic", 6)
    ro, rg, _ = R.gtp_propagate(x, G, kept, prop, 0.25)
    eo = emu.prune_gtp_propagate(x, kept, prop, ni, nw, 0.25)
    torch.testing.assert_close(eo, ro)
    gi, gw = emu.prune_gtp_graph_select(ni, nw, kept)
    ci, cw = OPS.prune_gtp_graph_select(ni, nw, kept)
    assert torch.equal(gi, ci) and torch.equal(gw, cw)
    torch.testing.assert_close(_dense(gi, gw), rg)
    g = torch.randn_like(eo)
    torch.testing.assert_close(emu.prune_gtp_propagate_backward(g, kept, prop, ni, nw, 0.25, N),
                               OPS.prune_gtp_propagate_backward(g, kept, prop, ni, nw, 0.25, N))


def test_gtp_select_matches_reference_and_zero_prop():
    attn = torch.randn(3, 4, 30, 30, dtype=torch.float64).softmax(-1)
    k, p = P.gtp_select(attn, 7)
    rk, rp = R.gtp_select(attn, 7)
    assert torch.equal(k, rk) and torch.equal(p, rp)
    k0, p0 = P.gtp_select(attn, 0)
    assert k0.shape == (3, 29) and p0.shape == (3, 0)  # P = 0 keeps everything (official code would keep none)
    x = torch.randn(3, 30, 5, dtype=torch.float64)
    ni, nw = P.gtp_graph(x, "semantic", 4)
    o, _, _ = P.gtp_propagate(x, k0, p0, ni, nw, 0.5)
    torch.testing.assert_close(o, torch.cat([x[:, :1], x.gather(1, k0.unsqueeze(-1).expand(-1, -1, 5))], 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gtp_half_precision(dtype, emu):
    B, N, C = 2, 50, 32
    x, kept, prop = _gtp_inputs(B, N, C, 10, torch.float32)
    ni, nw = OPS.prune_gtp_graph(x, "spatial", 8)
    ro, _, _ = R.gtp_propagate(x, R.gtp_build_graph(x, "spatial"), kept, prop, 0.1)
    for impl in (OPS, emu):
        o = impl.prune_gtp_propagate(x.to(dtype), kept, prop, ni, nw.to(dtype), 0.1)
        assert o.dtype == dtype
        torch.testing.assert_close(o.float(), ro, **_tol(dtype))


def test_gtp_propagate_gradcheck_and_reference_grads():
    B, N, C = 2, 17, 3
    x = torch.randn(B, N, C, dtype=torch.float64, requires_grad=True)
    attn = torch.randn(B, 2, N, N, dtype=torch.float64).softmax(-1)
    kept, prop = R.gtp_select(attn, 5)
    ni, nw = P.gtp_graph(x.detach(), "spatial", 8)
    assert torch.autograd.gradcheck(lambda a: P.gtp_propagate(a, kept, prop, ni, nw, 0.3)[0], (x,))
    G = R.gtp_build_graph(x.detach(), "spatial")
    g = torch.randn(B, N - 5, C, dtype=torch.float64)
    gx, = torch.autograd.grad(P.gtp_propagate(x, kept, prop, ni, nw, 0.3)[0], (x,), g)
    rx, = torch.autograd.grad(R.gtp_propagate(x, G, kept, prop, 0.3)[0], (x,), g)
    torch.testing.assert_close(gx, rx)


# ---- opcheck, compile, bad input ------------------------------------------------------------------------
def test_opcheck():
    B, N, C = 2, 17, 6
    x = torch.randn(B, N, C, dtype=torch.float64, requires_grad=True)
    s = torch.rand(B, N - 1, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(OPS.prune_evit_keep_fuse.default, (x, s, 9, True))
    torch.library.opcheck(OPS.prune_evit_keep_fuse.default, (x, s, 9, False))
    torch.library.opcheck(OPS.prune_topk_mask.default, (s.detach(), 5))
    xd = x.detach()
    ni, nw = OPS.prune_gtp_graph(xd, "mixed", 4)
    torch.library.opcheck(OPS.prune_gtp_graph.default, (xd, "mixed", 4))
    kept, prop = R.gtp_select(torch.rand(B, 2, N, N, dtype=torch.float64).softmax(-1), 4)
    torch.library.opcheck(OPS.prune_gtp_propagate.default, (x, kept, prop, ni, nw, 0.2))
    torch.library.opcheck(OPS.prune_gtp_graph_select.default, (ni, nw, kept))
    mask = torch.rand(B, N) < 0.5
    torch.library.opcheck(OPS.prune_gather_packed.default, (xd, mask),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_torch_compile_fullgraph():
    B, N, C = 2, 50, 8
    x = torch.randn(B, N, C)
    attn = torch.randn(B, 2, N, N).softmax(-1)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, attn):
        o, idx = P.evit_keep_fuse(x, P.evit_cls_attn(attn), 34)
        ni, nw = P.gtp_graph(x, "spatial", 8)
        kept, prop = P.gtp_select(attn, 10)
        y, (gi, gw), _ = P.gtp_propagate(x, kept, prop, ni, nw, 0.1)
        m = P.topk_mask(attn[:, :, 0, 1:].mean(1), 12)
        return o, idx, y, gi, gw, m

    o, idx, y, gi, gw, m = f(x, attn)
    ro, ridx = R.evit_keep_fuse(x, R.evit_cls_attn(attn), 34)
    torch.testing.assert_close(o, ro)
    assert torch.equal(idx, ridx)
    kept, prop = R.gtp_select(attn, 10)
    ry, rg, _ = R.gtp_propagate(x, R.gtp_build_graph(x, "spatial"), kept, prop, 0.1)
    torch.testing.assert_close(y, ry)
    torch.testing.assert_close(_dense(gi, gw).float(), rg)
    assert torch.equal(m, R.topk_mask(attn[:, :, 0, 1:].mean(1), 12))


def test_torch_compile_gather_packed_dynamic_size():
    import torch._dynamo

    x = torch.randn(3, 40, 8)
    scores = torch.rand(3, 40)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, scores):
        return P.gather_packed(x, scores > 0.5)

    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        p, cu = f(x, scores)
    rp, rc = R.gather_packed(x, scores > 0.5)
    assert torch.equal(p, rp) and torch.equal(cu, rc)


def test_bad_input_messages():
    x = torch.randn(2, 10, 4)
    s = torch.rand(2, 9)
    with pytest.raises(ValueError, match="left"):
        P.evit_keep_fuse(x, s, 0)
    with pytest.raises(ValueError, match="left"):
        OPS.prune_evit_keep_fuse(x, s, 10, True)
    with pytest.raises(ValueError, match="cls_attn"):
        OPS.prune_evit_keep_fuse(x, torch.rand(2, 10), 3, True)
    with pytest.raises(TypeError, match="x must be"):
        OPS.prune_evit_keep_fuse(x.long(), s, 3, True)
    with pytest.raises(TypeError, match="cls_attn"):
        OPS.prune_evit_keep_fuse(x, s.double(), 3, True)
    with pytest.raises(ValueError, match="kept_idx"):
        OPS.prune_evit_keep_fuse_backward(torch.randn(2, 5, 4), x, s, torch.full((2, 3), 99), True)
    with pytest.raises(ValueError, match="grad_out"):
        OPS.prune_evit_keep_fuse_backward(torch.randn(2, 6, 4), x, s, torch.zeros(2, 3, dtype=torch.long), True)
    with pytest.raises(ValueError, match="k must be"):
        OPS.prune_topk_mask(s, 10)
    with pytest.raises(TypeError, match="mask"):
        OPS.prune_gather_packed(x, torch.ones(2, 10))
    with pytest.raises(ValueError, match="mask"):
        OPS.prune_gather_packed(x, torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="graph_type"):
        OPS.prune_gtp_graph(x, "dense", 8)
    with pytest.raises(ValueError, match="square grid"):
        OPS.prune_gtp_graph(torch.randn(2, 11, 4), "spatial", 8)  # 10 image tokens: no square grid
    with pytest.raises(ValueError, match="num_neighbours"):
        OPS.prune_gtp_graph(torch.randn(2, 10, 4), "semantic", 9)
    with pytest.raises(ValueError, match="num_neighbours"):
        OPS.prune_gtp_graph(torch.randn(2, 50, 4), "semantic", 33)
    xg = torch.randn(2, 10, 4)
    ni, nw = OPS.prune_gtp_graph(xg, "semantic", 3)
    kept = torch.arange(1, 8).expand(2, -1).contiguous()
    prop = torch.tensor([[8, 9], [8, 9]])
    with pytest.raises(ValueError, match="prop_idx"):
        OPS.prune_gtp_propagate(xg, kept, prop + 5, ni, nw, 0.1)
    with pytest.raises(ValueError, match="kept_idx"):
        OPS.prune_gtp_propagate(xg, kept - 1, prop, ni, nw, 0.1)
    with pytest.raises(ValueError, match="nbr_idx"):
        OPS.prune_gtp_propagate(xg, kept, prop, ni[:, :5], nw[:, :5], 0.1)
    with pytest.raises(TypeError, match="nbr_w"):
        OPS.prune_gtp_propagate(xg, kept, prop, ni, nw.double(), 0.1)
    with pytest.raises(TypeError, match="kept_idx"):
        OPS.prune_gtp_graph_select(ni, nw, kept.int())
    with pytest.raises(ValueError, match="kept_idx"):
        OPS.prune_gtp_graph_select(ni, nw, kept + 10)


def test_emulated_bad_input_and_out_of_range_indices(emu):
    x = torch.randn(2, 10, 4)
    with pytest.raises(ValueError, match="left"):
        emu.prune_evit_keep_fuse(x, torch.rand(2, 9), 0, True)
    with pytest.raises(ValueError, match="graph_type"):
        emu.prune_gtp_graph(x, "dense", 8)
    ni, nw = OPS.prune_gtp_graph(x, "semantic", 3)
    kept = torch.tensor([[1, 2, 99], [1, 2, 3]])  # out of range: rejected before any kernel, as on the CPU
    with pytest.raises(ValueError, match=r"kept_idx values must be in \[1, 10\), got 99"):
        emu.prune_gtp_propagate(x, kept, torch.tensor([[4], [4]]), ni, nw, 0.1)


# ---- GTP rank from the fused attention's side outputs --------------------------------------------------
def test_gtp_rank_from_side_outputs_equals_rank_of_the_map():
    from imtok_cuda.attention import attention_with_side_outputs

    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g, dtype=torch.float64) for _ in range(3))
    bias = torch.rand(2, 17, generator=g, dtype=torch.float64).add(0.5).log()  # log token scales
    res = attention_with_side_outputs(q, k, v, key_bias=bias, cls_attn=False, col_sum=True)
    rank = P.gtp_rank_from_side_outputs(q, k, res.lse, res.col_sum, bias)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8) + bias[:, None, None, :], -1)
    torch.testing.assert_close(rank, R.gtp_rank(attn), rtol=1e-12, atol=1e-14)
    kept, prop = P.gtp_select_by_rank(rank, 4)
    rk, rp = R.gtp_select(attn, 4)
    assert torch.equal(kept, rk) and torch.equal(prop, rp)


# ---- real GPU ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_cpu(dtype):
    B, N, C = 8, 197, 384
    x = torch.randn(B, N, C).to(dtype)
    s = torch.rand(B, N - 1).to(dtype) if dtype == torch.float32 else _scores(B, N - 1, dtype, 0.01)
    o, i = OPS.prune_evit_keep_fuse(x, s, 138, True)
    co, ci = OPS.prune_evit_keep_fuse(x.cuda(), s.cuda(), 138, True)
    assert torch.equal(ci.cpu(), i)
    torch.testing.assert_close(co.cpu(), o, **_tol(dtype))
    g = torch.randn_like(o)
    for a, b in zip(OPS.prune_evit_keep_fuse_backward(g.cuda(), x.cuda(), s.cuda(), ci, True),
                    OPS.prune_evit_keep_fuse_backward(g, x, s, i, True)):
        torch.testing.assert_close(a.cpu(), b, **_tol(dtype))
    for gt in ("spatial", "semantic", "mixed"):
        ni, nw = OPS.prune_gtp_graph(x.float(), gt, 8)
        cni, cnw = OPS.prune_gtp_graph(x.float().cuda(), gt, 8)
        torch.testing.assert_close(_dense(cni.cpu(), cnw.cpu()), _dense(ni, nw), rtol=1e-5, atol=1e-5)
    attn = torch.rand(B, 6, N, N).softmax(-1)
    kept, prop = R.gtp_select(attn, 16)
    ni, nw = OPS.prune_gtp_graph(x.float(), "mixed", 8)
    nw = nw.to(dtype)
    y = OPS.prune_gtp_propagate(x, kept, prop, ni, nw, 0.1)
    cy = OPS.prune_gtp_propagate(x.cuda(), kept.cuda(), prop.cuda(), ni.cuda(), nw.cuda(), 0.1)
    torch.testing.assert_close(cy.cpu(), y, **_tol(dtype))
    gy = torch.randn_like(y)
    torch.testing.assert_close(
        OPS.prune_gtp_propagate_backward(gy.cuda(), kept.cuda(), prop.cuda(), ni.cuda(), nw.cuda(), 0.1, N).cpu(),
        OPS.prune_gtp_propagate_backward(gy, kept, prop, ni, nw, 0.1, N), **_tol(dtype))
    gi, gw = OPS.prune_gtp_graph_select(ni.cuda(), nw.cuda(), kept.cuda())
    ri, rw = OPS.prune_gtp_graph_select(ni, nw, kept)
    assert torch.equal(gi.cpu(), ri) and torch.equal(gw.cpu(), rw)
    sc = torch.rand(B, 576).to(dtype) if dtype == torch.float32 else _scores(B, 576, dtype)
    m = OPS.prune_topk_mask(sc, 144)
    assert torch.equal(OPS.prune_topk_mask(sc.cuda(), 144).cpu(), m)
    f = torch.randn(B, 576, 64).to(dtype)
    p, cu = OPS.prune_gather_packed(f.cuda(), m.cuda())
    rp, rc = OPS.prune_gather_packed(f, m)
    assert torch.equal(p.cpu(), rp) and torch.equal(cu.cpu(), rc)
    q, k = torch.randn(2, B, 16, 577, 64).to(dtype).unbind(0)
    torch.testing.assert_close(OPS.prune_cls_attn(q.cuda(), k.cuda(), 0.125).cpu(), OPS.prune_cls_attn(q, k, 0.125),
                               **_tol(dtype))
