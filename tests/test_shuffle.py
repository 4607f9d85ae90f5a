"""Token-Shuffle: reference (einops) vs CPU kernels vs emulated CUDA kernels vs an index-loop implementation."""
import pytest
import torch

import imtok_cuda
from imtok_cuda import shuffle as S
from imtok_cuda.reference import shuffle as R

EMU = imtok_cuda.emulation_available()
emu_ops = torch.ops.imtok_cuda_emu if EMU else None
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GRIDS = [(1, 1, 1), (2, 3, 2), (3, 2, 3), (4, 4, 2), (5, 7, 1)]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def loop_shuffle(x, h, w, s):
    B, T, D = x.shape
    y = torch.empty(B, h * w, s * s * D, dtype=x.dtype)
    W = w * s
    for i in range(h):
        for j in range(w):
            for s1 in range(s):
                for s2 in range(s):
                    y[:, i * w + j, (s1 * s + s2) * D:(s1 * s + s2 + 1) * D] = x[:, (i * s + s1) * W + j * s + s2]
    return y


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_shuffle_unshuffle_vs_reference(grid, dtype):
    h, w, s = grid
    x = torch.randn(2, h * s * w * s, 5, generator=_gen(h * 10 + w)).to(dtype)
    y = S.token_shuffle(x, h, w, s)
    assert torch.equal(y, R.token_shuffle(x, h, w, s))
    assert torch.equal(y, loop_shuffle(x, h, w, s))
    assert torch.equal(S.token_unshuffle(y, h, w, s), x)
    assert torch.equal(S.token_unshuffle(y, h, w, s), R.token_unshuffle(y, h, w, s))


def test_not_pixel_unshuffle_order():
    # the channel order is (s1 s2 d), not F.pixel_unshuffle's (d s1 s2)
    h, w, s, D = 2, 2, 2, 3
    x = torch.randn(1, h * s * w * s, D, generator=_gen(1))
    img = x.reshape(1, h * s, w * s, D).permute(0, 3, 1, 2)
    pu = torch.nn.functional.pixel_unshuffle(img, s).flatten(2).transpose(1, 2)
    assert not torch.equal(S.token_shuffle(x, h, w, s), pu)


def test_noncontiguous_and_empty():
    x = torch.randn(6, 16, 2, generator=_gen(2)).transpose(0, 2)  # [2, 16, 6]
    assert torch.equal(S.token_shuffle(x, 2, 2, 2), R.token_shuffle(x, 2, 2, 2))
    assert S.token_shuffle(torch.randn(0, 16, 3), 2, 2, 2).shape == (0, 4, 12)
    assert S.token_shuffle(torch.randn(2, 16, 0), 2, 2, 2).shape == (2, 4, 0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("grid", [(2, 3, 2), (8, 8, 2), (3, 3, 3)])
def test_fused_linear_vs_reference(dtype, bias, grid):
    h, w, s = grid
    g = _gen(h + w + s)
    D, N = 6, 10
    x = torch.randn(3, h * s * w * s, D, generator=g, dtype=dtype)
    wt = torch.randn(N, s * s * D, generator=g, dtype=dtype)
    b = torch.randn(N, generator=g, dtype=dtype) if bias else None
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S.shuffle_linear(x, h, w, s, wt, b), R.shuffle_linear(x, h, w, s, wt, b), **tol)
    xin = torch.randn(3, h * w, N, generator=g, dtype=dtype)
    wt2 = torch.randn(s * s * D, N, generator=g, dtype=dtype)
    b2 = torch.randn(s * s * D, generator=g, dtype=dtype) if bias else None
    torch.testing.assert_close(S.linear_unshuffle(xin, h, w, s, wt2, b2), R.linear_unshuffle(xin, h, w, s, wt2, b2),
                               **tol)


def test_fused_linear_many_blocks():
    # more than one CPU block (8 MiB of gathered rows: 512 rows of 2048 float64 features) and an uneven tail
    h, w, s, D, N = 20, 30, 2, 512, 8
    x = torch.randn(1, h * s * w * s, D, generator=_gen(3), dtype=torch.float64)
    wt = torch.randn(N, s * s * D, generator=_gen(4), dtype=torch.float64)
    torch.testing.assert_close(S.shuffle_linear(x, h, w, s, wt), R.shuffle_linear(x, h, w, s, wt))
    y = torch.randn(1, h * w, N, generator=_gen(5), dtype=torch.float64)
    torch.testing.assert_close(S.linear_unshuffle(y, h, w, s, wt.t().contiguous()),
                               R.linear_unshuffle(y, h, w, s, wt.t().contiguous()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_linear_low_precision(dtype):
    h, w, s, D, N = 4, 4, 2, 8, 16
    x = torch.randn(2, h * s * w * s, D, generator=_gen(5))
    wt = torch.randn(N, s * s * D, generator=_gen(6)) * 0.1
    got = S.shuffle_linear(x.to(dtype), h, w, s, wt.to(dtype)).float()
    torch.testing.assert_close(got, R.shuffle_linear(x, h, w, s, wt), rtol=3e-2, atol=3e-2)


def test_modules():
    m = S.ShuffleLinear(8, 16, 2, dtype=torch.float64)
    x = torch.randn(2, 64, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x, 4, 4), m.linear(R.token_shuffle(x, 4, 4, 2)))
    u = S.LinearUnshuffle(16, 8, 2, dtype=torch.float64)
    y = torch.randn(2, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(u(y, 4, 4), R.token_unshuffle(u.linear(y), 4, 4, 2))


def test_gradcheck():
    h, w, s, D, N = 2, 3, 2, 3, 4
    x = torch.randn(2, h * s * w * s, D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: S.token_shuffle(t, h, w, s), (x,))
    y = torch.randn(2, h * w, s * s * D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: S.token_unshuffle(t, h, w, s), (y,))
    wt = torch.randn(N, s * s * D, dtype=torch.float64, requires_grad=True)
    b = torch.randn(N, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, ww, bb: S.shuffle_linear(a, h, w, s, ww, bb), (x, wt, b))
    xin = torch.randn(2, h * w, N, dtype=torch.float64, requires_grad=True)
    wt2 = torch.randn(s * s * D, N, dtype=torch.float64, requires_grad=True)
    b2 = torch.randn(s * s * D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, ww, bb: S.linear_unshuffle(a, h, w, s, ww, bb), (xin, wt2, b2))


def test_opcheck():
    ops = torch.ops.imtok_cuda
    h, w, s, D, N = 2, 3, 2, 3, 4
    x = torch.randn(2, h * s * w * s, D, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, h * w, s * s * D, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(N, s * s * D, dtype=torch.float64, requires_grad=True)
    b = torch.randn(N, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.shuffle_token_shuffle, (x, h, w, s))
    torch.library.opcheck(ops.shuffle_token_unshuffle, (y, h, w, s))
    torch.library.opcheck(ops.shuffle_linear, (x, h, w, s, wt, b))
    torch.library.opcheck(ops.shuffle_linear, (x, h, w, s, wt, None))
    xin = torch.randn(2, h * w, N, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.shuffle_linear_unshuffle, (xin, h, w, s, wt.detach().t().contiguous(), None))


def test_torch_compile_fullgraph():
    m = S.ShuffleLinear(4, 8, 2)
    u = S.LinearUnshuffle(8, 4, 2)

    def f(x):
        return u(torch.relu(m(x, 3, 3)), 3, 3) + S.token_unshuffle(S.token_shuffle(x, 3, 3, 2), 3, 3, 2)

    x = torch.randn(2, 36, 4)
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x), f(x))


def test_bad_input():
    ops = torch.ops.imtok_cuda
    with pytest.raises(ValueError, match="x.shape\\[1\\]"):
        ops.shuffle_token_shuffle(torch.randn(2, 15, 3), 2, 2, 2)
    with pytest.raises(ValueError, match="x.shape\\[2\\]"):
        ops.shuffle_token_unshuffle(torch.randn(2, 4, 6), 2, 2, 2)
    with pytest.raises(ValueError, match="s must be positive"):
        ops.shuffle_token_shuffle(torch.randn(2, 16, 3), 2, 2, 0)
    with pytest.raises(TypeError, match="x"):
        ops.shuffle_token_shuffle(torch.ones(2, 16, 3, dtype=torch.int64), 2, 2, 2)
    with pytest.raises(ValueError, match="x"):
        ops.shuffle_token_shuffle(torch.randn(16, 3), 2, 2, 2)
    with pytest.raises(ValueError, match="weight.shape\\[1\\]"):
        ops.shuffle_linear(torch.randn(2, 16, 3), 2, 2, 2, torch.randn(5, 11), None)
    with pytest.raises(ValueError, match="bias"):
        ops.shuffle_linear(torch.randn(2, 16, 3), 2, 2, 2, torch.randn(5, 12), torch.randn(4))
    with pytest.raises(TypeError, match="weight"):
        ops.shuffle_linear(torch.randn(2, 16, 3), 2, 2, 2, torch.randn(5, 12, dtype=torch.float64), None)
    with pytest.raises(ValueError, match="weight.shape\\[0\\]"):
        ops.shuffle_linear_unshuffle(torch.randn(2, 4, 3), 2, 2, 2, torch.randn(6, 3), None)


@pytest.mark.emulated
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_permutations(dtype):
    h, w, s = 3, 2, 2
    x = torch.randn(2, h * s * w * s, 5, generator=_gen(7)).to(dtype)
    y = emu_ops.shuffle_token_shuffle(x, h, w, s)
    assert torch.equal(y, R.token_shuffle(x, h, w, s))
    assert torch.equal(emu_ops.shuffle_token_unshuffle(y, h, w, s), x)


@pytest.mark.emulated
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_emulated_fused_linear(dtype, bias):
    h, w, s, D, N = 3, 3, 2, 5, 18  # 18 rows x 18 cols: two tiles each way, with tails
    g = _gen(8)
    x = torch.randn(2, h * s * w * s, D, generator=g, dtype=dtype)
    wt = torch.randn(N, s * s * D, generator=g, dtype=dtype)
    b = torch.randn(N, generator=g, dtype=dtype) if bias else None
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emu_ops.shuffle_linear(x, h, w, s, wt, b), R.shuffle_linear(x, h, w, s, wt, b), **tol)
    xin = torch.randn(2, h * w, N, generator=g, dtype=dtype)
    wt2 = torch.randn(s * s * D, N, generator=g, dtype=dtype)
    b2 = torch.randn(s * s * D, generator=g, dtype=dtype) if bias else None
    torch.testing.assert_close(emu_ops.shuffle_linear_unshuffle(xin, h, w, s, wt2, b2),
                               R.linear_unshuffle(xin, h, w, s, wt2, b2), **tol)


@pytest.mark.emulated
def test_emulated_fused_linear_half():
    h, w, s, D, N = 2, 2, 2, 4, 8
    x = torch.randn(1, h * s * w * s, D, generator=_gen(9))
    wt = torch.randn(N, s * s * D, generator=_gen(10)) * 0.1
    got = emu_ops.shuffle_linear(x.half(), h, w, s, wt.half(), None).float()
    torch.testing.assert_close(got, R.shuffle_linear(x, h, w, s, wt), rtol=2e-2, atol=2e-2)


@pytest.mark.cuda
@needs_gpu
def test_cuda_matches_reference():
    h, w, s, D, N = 16, 16, 2, 64, 128
    x = torch.randn(4, h * s * w * s, D, device="cuda")
    wt = torch.randn(N, s * s * D, device="cuda") * 0.05
    b = torch.randn(N, device="cuda")
    assert torch.equal(S.token_shuffle(x, h, w, s), R.token_shuffle(x, h, w, s))
    torch.testing.assert_close(S.shuffle_linear(x, h, w, s, wt, b), R.shuffle_linear(x, h, w, s, wt, b),
                               rtol=1e-4, atol=1e-4)
