"""sampling family: fused AR sampling (CFG, temperature, top-k, top-p), the MaskGIT step (TiTok), GSD verification.

Each op against the reference (exact where sampling is deterministic: temperature 0, top_k 1, MaskGIT with
randomize_temperature 0, GSD at temperature 0), in distribution elsewhere (chi-square / binomial tests over many
draws with fixed seeds), and the CUDA kernels (csrc/sampling/sampling_kernels.cuh) run under the emulation shim
("emulated") against the CPU kernel: the Philox draws make them sample the same tokens for the same seed.
"""
import math

import pytest
import torch

from imtok_cuda import sampling as S
from imtok_cuda.reference import sampling as R

OPS = torch.ops.imtok_cuda
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def chi_square_p(counts, probs):
    """p-value of Pearson's chi-square test of counts against probs (cells with probability 0 must be empty)."""
    counts = counts.double()
    n = counts.sum()
    probs = probs.double()
    assert counts[probs == 0].sum() == 0, "a token outside the kept set was sampled"
    keep = probs > 0
    exp = probs[keep] * n
    stat = ((counts[keep] - exp) ** 2 / exp).sum()
    df = int(keep.sum()) - 1
    if df == 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64), stat / 2))


def support(samples):
    return set(samples.tolist())


# ---- sample_logits: deterministic cases -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [False, True])
def test_sample_logits_greedy_matches_reference(dtype, cfg):
    c = torch.randn(7, 333).to(dtype)
    u = torch.randn(7, 333).to(dtype) if cfg else None
    want = R.sample_logits(c, u, 1.75, 0.0)
    assert torch.equal(S.sample_logits(c, u, 1.75, 0.0), want)
    # top_k = 1 is deterministic at any temperature when the maximum is unique
    d = torch.randn(7, 333).to(dtype)
    d[torch.arange(7), torch.randint(0, 333, (7,))] = 8.0
    assert torch.equal(S.sample_logits(d, None, 1.0, 0.8, 1), R.sample_logits(d, None, 1.0, 0.8, 1))


def test_sample_logits_greedy_ties_lowest_index():
    l = torch.zeros(3, 10)
    l[0, [3, 7]] = 2.0
    l[1, [0, 9]] = 1.0
    assert S.sample_logits(l, temperature=0.0).tolist() == [3, 0, 0]


def test_sample_logits_emulated_matches_reference_deterministic(emu):
    for dtype in DTYPES:
        c = torch.randn(3, 300).to(dtype)
        u = torch.randn(3, 300).to(dtype)
        assert torch.equal(emu.sampling_sample_logits(c, u, 1.5, 0.0, 0, 1.0, 0), R.sample_logits(c, u, 1.5, 0.0))
    d = torch.randn(3, 300)
    assert torch.equal(emu.sampling_sample_logits(d, None, 1.0, 0.7, 1, 1.0, 5), d.argmax(-1))


def test_top_k_keeps_ties_at_the_kth_value(emu):
    row = torch.tensor([5.0, 3.0, 3.0, 3.0, 1.0, 0.0, 2.9, -1.0])
    kept = R.filter_logits(row[None], top_k=2)[0] > -math.inf
    assert kept.nonzero().flatten().tolist() == [0, 1, 2, 3]
    l = (row / 1.0).expand(600, -1).contiguous() * 0.3  # flatter, so every kept token shows up
    got = S.sample_logits(l, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(1))
    assert support(got) == {0, 1, 2, 3}
    got_emu = emu.sampling_sample_logits(l[:24], None, 1.0, 1.0, 2, 1.0, 7)
    assert support(got_emu) <= {0, 1, 2, 3}
    assert torch.equal(got_emu, OPS.sampling_sample_logits(l[:24], None, 1.0, 1.0, 2, 1.0, 7))


@pytest.mark.parametrize("top_p, want", [(0.45, {1}), (0.75, {1, 5}), (0.85, {1, 5, 0}), (0.99, {1, 5, 0, 3})])
def test_top_p_keeps_the_first_token_past_p(top_p, want):
    # probabilities 0.5 (token 1), 0.3 (token 5), 0.15 (token 0), 0.05 (token 3), nothing else
    p = torch.zeros(6)
    p[[1, 5, 0, 3]] = torch.tensor([0.5, 0.3, 0.15, 0.05])
    row = torch.where(p > 0, p.log(), torch.full_like(p, -math.inf))
    kept = R.filter_logits(row[None], top_p=top_p)[0] > -math.inf
    assert set(kept.nonzero().flatten().tolist()) == want
    got = S.sample_logits(row.expand(800, -1).contiguous(), top_p=top_p, generator=torch.Generator().manual_seed(2))
    assert support(got) == want


def test_top_p_ties_at_the_cut_off_by_index(emu):
    # e^2 and four tokens at e^1: the cut-off falls inside the tie group; ties are kept in index order
    row = torch.tensor([1.0, 2.0, 0.0, 1.0, 1.0, 1.0])
    kept = R.filter_logits(row[None], top_p=0.6)[0] > -math.inf
    assert kept.nonzero().flatten().tolist() == [0, 1, 3]
    l = row.expand(400, -1).contiguous()
    assert support(S.sample_logits(l, top_p=0.6, generator=torch.Generator().manual_seed(3))) == {0, 1, 3}
    e = emu.sampling_sample_logits(l[:16], None, 1.0, 1.0, 0, 0.6, 9)
    assert support(e) <= {0, 1, 3}
    assert torch.equal(e, OPS.sampling_sample_logits(l[:16], None, 1.0, 1.0, 0, 0.6, 9))


def test_one_token_vocabulary_and_empty_batch(emu):
    one = torch.randn(4, 1)
    for op in (OPS, emu):
        assert op.sampling_sample_logits(one, None, 1.0, 1.0, 0, 0.5, 3).tolist() == [0, 0, 0, 0]
        assert op.sampling_sample_logits(torch.empty(0, 5), None, 1.0, 1.0, 2, 0.9, 3).shape == (0,)
    assert R.sample_logits(torch.empty(0, 5), top_k=2).shape == (0,)
    for B, N in ((0, 4), (2, 0)):
        c = torch.randn(B, N, 7)
        tok = torch.full((B, N), 7)
        ml = torch.zeros(B, dtype=torch.long)
        for op in (OPS, emu):
            out = op.sampling_maskgit_step(c, tok, 7, ml, None, 0.0, "muse", 1.0, 1.0, 3)
            assert [tuple(o.shape) for o in out] == [(B, N)] * 3
        assert [tuple(o.shape) for o in R.maskgit_step(c, tok, 7, 0)] == [(B, N)] * 3


def test_sample_logits_non_contiguous():
    c = torch.randn(300, 6).t()
    u = torch.randn(300, 6).t()
    for kw in (dict(temperature=0.0), dict(temperature=0.9, top_k=30, top_p=0.9)):
        a = S.sample_logits(c, u, 2.0, generator=torch.Generator().manual_seed(4), **kw)
        b = S.sample_logits(c.contiguous(), u.contiguous(), 2.0, generator=torch.Generator().manual_seed(4), **kw)
        assert torch.equal(a, b)


def test_non_finite_logits_never_crash_emulated_sampling_equals_cpu(emu):
    l = torch.randn(3, 50)
    l[0, 3] = math.inf
    l[1, 5] = math.nan
    l[2] = -math.inf
    for args in ((1.0, 1.0, 5, 0.9), (1.0, 0.0, 0, 1.0), (1.0, 1.0, 0, 1.0)):
        a = OPS.sampling_sample_logits(l, None, *args, 3)
        assert torch.equal(a, emu.sampling_sample_logits(l, None, *args, 3))
        assert bool(((a >= 0) & (a < 50)).all())


# ---- sample_logits: distribution ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_logits_distribution_chi_square(dtype):
    g = torch.Generator().manual_seed(5)
    V, n = 24, 30000
    c = (torch.randn(V, generator=g) * 1.5).to(dtype)
    u = (torch.randn(V, generator=g) * 1.5).to(dtype)
    want = torch.softmax(R.filter_logits(R.process_logits(c[None], u[None], 1.5, 0.9), 16, 0.9), -1)[0]
    got = S.sample_logits(c.expand(n, -1), u.expand(n, -1), 1.5, 0.9, 16, 0.9, generator=g)
    counts = torch.bincount(got, minlength=V)
    assert chi_square_p(counts, want) > 1e-4
    # the reference itself passes the same test
    ref = R.sample_logits(c.expand(n, -1), u.expand(n, -1), 1.5, 0.9, 16, 0.9, generator=g)
    assert chi_square_p(torch.bincount(ref, minlength=V), want) > 1e-4


def test_philox_cpu_and_emulated_sampling_kernels_draw_the_same(emu):
    g = torch.Generator().manual_seed(6)
    c = torch.randn(6, 300, generator=g)
    u = torch.randn(6, 300, generator=g)
    for args in ((1.0, 1.0, 0, 1.0), (2.0, 0.7, 40, 0.9), (1.0, 1.3, 0, 0.5)):
        seed = S.draw_seed(g)
        assert torch.equal(emu.sampling_sample_logits(c, u, *args, seed), OPS.sampling_sample_logits(c, u, *args, seed))
    # the same generator state gives the same samples; a different one different samples
    a = S.sample_logits(c, generator=torch.Generator().manual_seed(9))
    b = S.sample_logits(c, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


# ---- maskgit_step ------------------------------------------------------------------------------------------------
def _maskgit_inputs(B, N, V, dtype, g, known=0.4):
    c = torch.randn(B, N, V, generator=g).to(dtype)
    u = torch.randn(B, N, V, generator=g).to(dtype)
    tok = torch.randint(0, V, (B, N), generator=g)
    tok[torch.rand(B, N, generator=g) > known] = V  # mask_token_id = V
    return c, u, tok


def _assert_same(a, b):
    for x, y, name in zip(a, b, ("sampled", "next_tokens", "remask")):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["muse", "mdt"])
def test_maskgit_t0_matches_reference(dtype, form):
    g = torch.Generator().manual_seed(7)
    B, N, V = 4, 40, 50
    c, u, tok = _maskgit_inputs(B, N, V, dtype, g)
    tok[1] = V  # an all-masked row
    ml = torch.tensor([5, 0, N, 17])
    for uncond, temp in ((u, 0.5), (None, 1.0)):
        want = R.maskgit_step(c, tok, V, ml, uncond, 3.0, form, temp, 0.0)
        _assert_same(S.maskgit_step(c, tok, V, ml, uncond, 3.0, form, temp, 0.0), want)
    # int mask_len, non-contiguous logits
    cn = c.transpose(0, 1).contiguous().transpose(0, 1)
    _assert_same(S.maskgit_step(cn, tok, V, 6, None, 0.0, form, 1.0, 0.0), R.maskgit_step(c, tok, V, 6))


def test_maskgit_emulated_matches_reference(emu):
    g = torch.Generator().manual_seed(8)
    for dtype, form in ((torch.float32, "muse"), (torch.bfloat16, "mdt")):
        c, u, tok = _maskgit_inputs(2, 12, 70, dtype, g)
        tok[0] = 70
        ml = torch.tensor([4, 12])
        _assert_same(emu.sampling_maskgit_step(c, tok, 70, ml, u, 2.0, form, 0.5, 0.0, 0),
                     R.maskgit_step(c, tok, 70, ml, u, 2.0, form, 0.5, 0.0))
    # one-token rows
    c1 = torch.randn(3, 1, 9)
    t1 = torch.tensor([[9], [2], [9]])
    ml1 = torch.tensor([1, 1, 0])
    _assert_same(emu.sampling_maskgit_step(c1, t1, 9, ml1, None, 0.0, "muse", 1.0, 0.0, 0),
                 R.maskgit_step(c1, t1, 9, ml1))


def test_maskgit_confidence_ties_and_infinite_cut_off(emu):
    # every position has the same logits: equal confidences, so all ties at the cut-off are re-masked (TiTok)
    V = 6
    c = torch.randn(1, 1, V).expand(2, 10, V).contiguous()
    tok = torch.full((2, 10), V)
    tok[1, :3] = 1  # known tokens: confidence +inf
    ml = torch.tensor([1, 9])  # row 1: more than its 7 masked positions -> the cut-off is +inf
    want = R.maskgit_step(c, tok, V, ml)
    assert want[2][0].all() and want[2][1].all()
    for op in (OPS, emu):
        _assert_same(op.sampling_maskgit_step(c, tok, V, ml, None, 0.0, "muse", 1.0, 0.0, 0), want)


def test_maskgit_golden_remaining_masks():
    """TiTok's schedule: remaining masked tokens per step for N=32, S=8 (specs/models.md)."""
    g = torch.Generator().manual_seed(10)
    B, N, V, steps = 2, 32, 16, 8
    ids = torch.full((B, N), V)
    remaining = []
    for step in range(steps):
        ratio = (step + 1) / steps
        logits = torch.randn(B, N, V, generator=g)
        masked = int((ids == V).sum(-1).min())
        mask_len = max(1, min(masked - 1, math.floor(N * math.acos(ratio) / (math.pi / 2))))
        sampled, nxt, _ = S.maskgit_step(logits, ids, V, mask_len, randomize_temperature=4.5 * (1 - ratio),
                                         generator=g)
        ids = sampled if step == steps - 1 else nxt
        remaining.append(int((ids == V).sum(-1)[0]))
    assert remaining == [29, 26, 24, 21, 18, 14, 10, 0]


def test_maskgit_sampling_distribution_chi_square():
    # argmax(l + t g) ~ softmax(l / t); the confidence Gumbel is checked through its mean (Euler's constant)
    g = torch.Generator().manual_seed(11)
    V, n, t = 10, 20000, 1.7
    row = torch.randn(V, generator=g)
    logits = row.expand(1, n, V)
    tok = torch.full((1, n), V)
    sampled, _, _ = S.maskgit_step(logits, tok, V, 0, randomize_temperature=t, generator=g)
    assert chi_square_p(torch.bincount(sampled[0], minlength=V), torch.softmax(row / t, -1)) > 1e-4


def test_philox_cpu_and_emulated_maskgit_draw_the_same(emu):
    g = torch.Generator().manual_seed(12)
    c, u, tok = _maskgit_inputs(2, 8, 90, torch.float32, g)
    ml = torch.tensor([3, 2])
    seed = S.draw_seed(g)
    _assert_same(emu.sampling_maskgit_step(c, tok, 90, ml, u, 2.5, "muse", 0.8, 3.0, seed),
                 OPS.sampling_maskgit_step(c, tok, 90, ml, u, 2.5, "muse", 0.8, 3.0, seed))


# ---- gsd_verify --------------------------------------------------------------------------------------------------
def test_gsd_greedy_matches_reference(emu):
    g = torch.Generator().manual_seed(13)
    B, L, V = 4, 5, 40
    t = torch.randn(B, L + 1, V, generator=g)
    d = torch.randn(B, L, V, generator=g)
    x = t[:, :L].argmax(-1)
    x[0, 2] = (x[0, 2] + 1) % V  # row 0 rejects at 2; row 1 at 0; rows 2, 3 accept all
    x[1, 0] = (x[1, 0] + 3) % V
    E = torch.randn(V, 6, generator=g)
    for Lt in (L, L + 1):
        for w in (0, 3):
            want = R.gsd_verify(x, t[:, :Lt], d, E, window=w, temperature=0.0)
            assert want[0].tolist() == [2, 0, 5, 5]
            got = S.gsd_verify(x, t[:, :Lt], d, E, window=w, temperature=0.0)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    got = emu.sampling_gsd_verify(x[:2], t[:2], d[:2], E, 3, 0.15, 0.5, 0.0, 0, 1.0, 1)
    want = R.gsd_verify(x[:2], t[:2], d[:2], E, window=3, temperature=0.0)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _gsd_rows(n, V, g):
    p_logits = torch.randn(V, generator=g)
    q_logits = p_logits + torch.randn(V, generator=g)
    return p_logits, q_logits


def test_gsd_window0_acceptance_is_sjd_and_residual_distribution():
    """window = 0: accept with probability min(1, p(x) / q(x)); rejected rows resample from norm(max(0, p - q))."""
    g = torch.Generator().manual_seed(14)
    V, n = 8, 20000
    pl, ql = _gsd_rows(n, V, g)
    p, q = torch.softmax(pl, -1), torch.softmax(ql, -1)
    x = int(torch.argmin(p / q))  # the token with the lowest acceptance probability
    a = float(torch.clamp(p[x] / q[x], max=1.0))
    acc, nxt = S.gsd_verify(torch.full((n, 1), x), pl.expand(n, 1, V), ql.expand(n, 1, V), torch.zeros(V, 2),
                            window=0, generator=g)
    rate = acc.double().mean().item()
    assert abs(rate - a) < 5 * math.sqrt(a * (1 - a) / n)
    assert bool((nxt[acc == 1] == -1).all())
    resid = torch.clamp(p - q, min=0)
    assert chi_square_p(torch.bincount(nxt[acc == 0], minlength=V), resid / resid.sum()) > 1e-4


def test_gsd_cluster_acceptance_rate_matches_reference_rule():
    """window > 0: acceptance frequency == min(1, sum_C p / sum_C q) with the reference cluster."""
    g = torch.Generator().manual_seed(15)
    V, n, D = 12, 20000, 3
    pl, ql = _gsd_rows(n, V, g)
    E = torch.randn(V, D, generator=g) * 0.4
    p, q = torch.softmax(pl, -1), torch.softmax(ql, -1)
    x = int(torch.argmin(p / q))
    C = R.gsd_cluster(p, pl, x, E, window=3, prob_threshold=0.2, dist_threshold=0.6)
    assert int(C.sum()) > 1  # a real group
    a = float(torch.clamp(p[C].sum() / q[C].sum(), max=1.0))
    acc, _ = S.gsd_verify(torch.full((n, 1), x), pl.expand(n, 1, V), ql.expand(n, 1, V), E, window=3,
                          prob_threshold=0.2, dist_threshold=0.6, generator=g)
    rate = acc.double().mean().item()
    assert abs(rate - a) < 5 * math.sqrt(max(a * (1 - a), 1e-4) / n) + 1e-3
    ref_acc, _ = R.gsd_verify(torch.full((400, 1), x), pl.expand(400, 1, V), ql.expand(400, 1, V), E, window=3,
                              prob_threshold=0.2, dist_threshold=0.6, generator=g)
    assert abs(ref_acc.double().mean().item() - a) < 5 * math.sqrt(max(a * (1 - a), 1e-4) / 400) + 1e-3


def test_gsd_one_token_cluster_is_exactly_sjd():
    """A cluster that the filters reduce to x alone gives SJD's decisions draw for draw (same Philox numbers)."""
    g = torch.Generator().manual_seed(18)
    B, L, V = 64, 4, 30
    t = torch.randn(B, L + 1, V, generator=g)
    d = t[:, :L] + torch.randn(B, L, V, generator=g)
    x = torch.softmax(d, -1).view(-1, V).multinomial(1, generator=g).view(B, L)
    E = torch.randn(V, 4, generator=g)
    sjd = OPS.sampling_gsd_verify(x, t, d, E, 0, 0.15, 0.5, 1.0, 0, 1.0, 21)
    for pt, dt in ((0.0, 0.5), (0.15, 0.0)):
        one = OPS.sampling_gsd_verify(x, t, d, E, 7, pt, dt, 1.0, 0, 1.0, 21)
        assert torch.equal(one[0], sjd[0]) and torch.equal(one[1], sjd[1])
    assert 0 < int(sjd[0].sum()) < B * L  # some accepted, some rejected


def test_philox_cpu_and_emulated_gsd_kernels_agree(emu):
    g = torch.Generator().manual_seed(16)
    B, L, V = 2, 3, 40
    t = torch.randn(B, L + 1, V, generator=g)
    d = t[:, :L] + 0.5 * torch.randn(B, L, V, generator=g)
    x = torch.randint(0, V, (B, L), generator=g)
    E = (torch.randn(V, 4, generator=g) * 0.3).to(torch.bfloat16)
    for args in ((3, 0.15, 0.5, 1.0, 0, 1.0), (2, 0.3, 0.8, 0.8, 20, 0.9)):
        seed = S.draw_seed(g)
        a = emu.sampling_gsd_verify(x, t, d, E, *args, seed)
        b = OPS.sampling_gsd_verify(x, t, d, E, *args, seed)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    e = emu.sampling_gsd_verify(x[:0], t[:0], d[:0], E, 3, 0.15, 0.5, 1.0, 0, 1.0, 1)
    assert e[0].shape == (0,) and e[1].shape == (0,)


# ---- registration, compile, bad input ----------------------------------------------------------------------------
def test_opcheck():
    c = torch.randn(3, 20)
    torch.library.opcheck(OPS.sampling_sample_logits.default, (c, torch.randn(3, 20), 2.0, 0.9, 5, 0.9, 1))
    c3 = torch.randn(2, 5, 20)
    tok = torch.full((2, 5), 20)
    torch.library.opcheck(OPS.sampling_maskgit_step.default,
                          (c3, tok, 20, torch.tensor([2, 3]), None, 0.0, "muse", 1.0, 1.0, 3))
    torch.library.opcheck(OPS.sampling_gsd_verify.default,
                          (torch.randint(0, 20, (2, 3)), torch.randn(2, 4, 20), torch.randn(2, 3, 20),
                           torch.randn(20, 4), 3, 0.15, 0.5, 1.0, 0, 1.0, 2))


def test_torch_compile_fullgraph():
    def f(c, u, tok, ml):
        a = OPS.sampling_sample_logits(c[:, 0], u[:, 0], 1.5, 0.8, 5, 0.9, 123)
        s, nxt, rm = OPS.sampling_maskgit_step(c, tok, 16, ml, u, 2.0, "mdt", 1.0, 2.0, 7)
        return a, s, nxt, rm

    c, u = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    tok = torch.full((2, 6), 16)
    ml = torch.tensor([2, 3])
    want = f(c, u, tok, ml)
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(c, u, tok, ml)
    for x, y in zip(got, want):
        assert torch.equal(x, y)


def test_bad_input_messages():
    c = torch.randn(2, 10)
    with pytest.raises(ValueError, match="top_k"):
        S.sample_logits(c, top_k=11)
    with pytest.raises(ValueError, match="top_p"):
        S.sample_logits(c, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        S.sample_logits(c, temperature=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        S.sample_logits(c, temperature=float("inf"))
    with pytest.raises(TypeError, match="logits"):
        S.sample_logits(c.long())
    with pytest.raises(ValueError, match="uncond_logits"):
        S.sample_logits(c, torch.randn(2, 9))
    with pytest.raises(ValueError, match="logits must have 2"):
        S.sample_logits(torch.randn(10))
    # direct op calls: the C++ checks name the argument too
    with pytest.raises(ValueError, match="top_k"):
        OPS.sampling_sample_logits(c, None, 1.0, 1.0, 11, 1.0, 0)
    with pytest.raises(ValueError, match="top_p"):
        OPS.sampling_sample_logits(c, None, 1.0, 1.0, 0, 1.5, 0)
    with pytest.raises(TypeError, match="logits"):
        OPS.sampling_sample_logits(c.double(), None, 1.0, 1.0, 0, 1.0, 0)
    c3 = torch.randn(2, 4, 10)
    tok = torch.full((2, 4), 10)
    with pytest.raises(ValueError, match="mask_len"):
        S.maskgit_step(c3, tok, 10, 5)
    with pytest.raises(ValueError, match="mask_len"):
        S.maskgit_step(c3, tok, 10, torch.tensor([1, 7]))
    with pytest.raises(ValueError, match="mask_len"):
        OPS.sampling_maskgit_step(c3, tok, 10, torch.tensor([1, 7]), None, 0.0, "muse", 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="tokens"):
        OPS.sampling_maskgit_step(c3, tok + 1, 10, torch.tensor([1, 1]), None, 0.0, "muse", 1.0, 0.0, 0)
    with pytest.raises(TypeError, match="tokens"):
        S.maskgit_step(c3, tok.int(), 10, 1)
    with pytest.raises(ValueError, match="cfg_form"):
        S.maskgit_step(c3, tok, 10, 1, cfg_form="x")
    with pytest.raises(ValueError, match="cfg_form"):
        OPS.sampling_maskgit_step(c3, tok, 10, torch.tensor([1, 1]), None, 0.0, "x", 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="softmax_temperature"):
        S.maskgit_step(c3, tok, 10, 1, softmax_temperature=0.0)
    x = torch.randint(0, 10, (2, 3))
    with pytest.raises(ValueError, match="draft_tokens"):
        S.gsd_verify(x + 10, torch.randn(2, 3, 10), torch.randn(2, 3, 10), torch.randn(10, 2))
    with pytest.raises(ValueError, match="draft_tokens"):
        OPS.sampling_gsd_verify(x + 10, torch.randn(2, 3, 10), torch.randn(2, 3, 10), torch.randn(10, 2), 7, 0.15,
                                0.5, 1.0, 0, 1.0, 0)
    with pytest.raises(ValueError, match="target_logits"):
        S.gsd_verify(x, torch.randn(2, 5, 10), torch.randn(2, 3, 10), torch.randn(10, 2))
    with pytest.raises(ValueError, match="embedding"):
        S.gsd_verify(x, torch.randn(2, 3, 10), torch.randn(2, 3, 10), torch.randn(9, 2))
    with pytest.raises(ValueError, match="window"):
        S.gsd_verify(x, torch.randn(2, 3, 10), torch.randn(2, 3, 10), torch.randn(10, 2), window=-1)


@pytest.mark.cuda
def test_cuda_kernels_match_cpu_kernels():
    g = torch.Generator().manual_seed(17)
    c = torch.randn(8, 5000, generator=g)
    u = torch.randn(8, 5000, generator=g)
    for args in ((1.5, 0.0, 0, 1.0), (1.5, 1.0, 200, 0.9), (1.0, 0.7, 0, 0.8)):
        a = OPS.sampling_sample_logits(c.cuda(), u.cuda(), *args, 5).cpu()
        b = OPS.sampling_sample_logits(c, u, *args, 5)
        assert (a == b).float().mean() >= 0.99  # GPU expf / logf may differ in the last ulp
    cm, um, tok = _maskgit_inputs(2, 64, 300, torch.float32, g)
    ml = torch.tensor([10, 20])
    a = OPS.sampling_maskgit_step(cm.cuda(), tok.cuda(), 300, ml.cuda(), um.cuda(), 2.0, "muse", 1.0, 0.0, 0)
    _assert_same([y.cpu() for y in a], R.maskgit_step(cm, tok, 300, ml, um, 2.0, "muse", 1.0, 0.0))
