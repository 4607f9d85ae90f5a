"""Splat renderer: reference vs float64 direct evaluation vs CPU kernel vs emulated CUDA kernel (+ real GPU)."""
import math

import pytest
import torch

import imtok_cuda.splat as splat
from imtok_cuda.reference import splat as ref

HAS_GPU = torch.cuda.is_available()


def make_geometry(B, N, dtype=torch.float64, sigma=(0.05, 0.35), rho=0.8, spread=1.1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.empty(B, N, 5, dtype=torch.float64)
    g[..., :2] = torch.rand(B, N, 2, generator=gen) * (sigma[1] - sigma[0]) + sigma[0]
    g[..., 2] = (torch.rand(B, N, generator=gen) * 2 - 1) * rho
    g[..., 3:] = (torch.rand(B, N, 2, generator=gen) * 2 - 1) * spread
    return g.to(dtype)


def make_inputs(B, N, C, dtype=torch.float64, seed=0, **kw):
    g = make_geometry(B, N, dtype, seed=seed, **kw)
    f = torch.randn(B, N, C, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(dtype)
    return g, f


def emu_render(g, f, size, box_sigma=3.0, lengths=None, normalize=False):
    s = math.inf if box_sigma is None else box_sigma
    return torch.ops.imtok_cuda_emu.splat_render(g, f, size[0], size[1], s, lengths, normalize)


def cpu_render(g, f, size, box_sigma=3.0, lengths=None, normalize=False):
    return splat.render(g, f, size, box_sigma, lengths, normalize)


def tol(dtype):
    return {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 2e-5), torch.float16: (1e-2, 1e-2),
            torch.bfloat16: (5e-2, 5e-2)}[dtype]


def ref_grads(g, f, size, grad, **kw):
    gg = g.detach().clone().requires_grad_()
    ff = f.detach().clone().requires_grad_()
    (ref.render(gg, ff, size, **kw).to(grad.dtype) * grad).sum().backward()
    return gg.grad, ff.grad


# ---- reference ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("box_sigma", [3.0, 1.5, None])
@pytest.mark.parametrize("normalize", [False, True])
def test_reference_matches_float64_direct(box_sigma, normalize):
    g, f = make_inputs(2, 7, 3)
    lengths = torch.tensor([7, 4])
    for ln in (None, lengths):
        a = ref.render(g, f, (9, 12), box_sigma, ln, normalize)
        d = ref.render_direct(g, f, (9, 12), box_sigma, ln, normalize)
        torch.testing.assert_close(a, d, rtol=1e-12, atol=1e-12)


# ---- CPU kernel vs reference --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("normalize", [False, True])
def test_cpu_forward_matches_reference(dtype, normalize):
    g, f = make_inputs(3, 11, 5, dtype)
    for size in [(13, 11), (1, 7), (6, 1), (20, 33)]:
        for box in (3.0, None):
            out = cpu_render(g, f, size, box, normalize=normalize)
            assert out.dtype == dtype and out.shape == (3, 5) + size
            exp = ref.render(g, f, size, box, normalize=normalize)
            rtol, atol = tol(dtype)
            torch.testing.assert_close(out, exp, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("normalize", [False, True])
def test_cpu_backward_matches_reference(dtype, normalize):
    g, f = make_inputs(2, 9, 4, dtype)
    size = (13, 11)
    grad = torch.randn(2, 4, *size, dtype=torch.float64).to(dtype)
    gg = g.clone().requires_grad_()
    ff = f.clone().requires_grad_()
    (cpu_render(gg, ff, size, normalize=normalize) * grad).sum().backward()
    eg, ef = ref_grads(g.double(), f.double(), size, grad.double(), normalize=normalize)
    scale_g = eg.abs().max().item() + 1
    scale_f = ef.abs().max().item() + 1
    rtol, atol = tol(dtype)
    if dtype == torch.bfloat16:  # inputs rounded to bf16 first: compare against the reference on the same values
        rtol, atol = 2e-2, 2e-2
    torch.testing.assert_close(gg.grad.double() / scale_g, eg / scale_g, rtol=rtol, atol=atol)
    torch.testing.assert_close(ff.grad.double() / scale_f, ef / scale_f, rtol=rtol, atol=atol)


def test_cpu_noncontiguous_inputs():
    g, f = make_inputs(2, 10, 6, torch.float32)
    gt = g.transpose(0, 1).contiguous().transpose(0, 1)
    ft = f.transpose(1, 2).contiguous().transpose(1, 2)
    assert not gt.is_contiguous() and not ft.is_contiguous()
    torch.testing.assert_close(cpu_render(gt, ft, (9, 10)), cpu_render(g, f, (9, 10)), rtol=0, atol=0)


@pytest.mark.parametrize("B,N,C,H,W", [(0, 3, 2, 4, 4), (2, 0, 2, 4, 4), (2, 3, 0, 4, 4), (2, 3, 2, 0, 5),
                                       (2, 3, 2, 5, 0), (1, 1, 1, 1, 1)])
def test_empty_and_tiny(B, N, C, H, W):
    g, f = make_inputs(B, N, C, torch.float32)
    gg = g.clone().requires_grad_()
    ff = f.clone().requires_grad_()
    out = cpu_render(gg, ff, (H, W))
    torch.testing.assert_close(out, ref.render(g, f, (H, W)))
    out.sum().backward()
    assert gg.grad.shape == g.shape and ff.grad.shape == f.shape


@pytest.mark.emulated
@pytest.mark.parametrize("B,N,C,H,W", [(0, 3, 2, 4, 4), (2, 0, 2, 4, 4), (2, 3, 0, 4, 4), (2, 3, 2, 0, 5),
                                       (2, 3, 2, 5, 0), (1, 1, 1, 1, 1)])
def test_empty_and_tiny_emulated(B, N, C, H, W):
    g, f = make_inputs(B, N, C, torch.float32)
    torch.testing.assert_close(emu_render(g, f, (H, W)), ref.render(g, f, (H, W)))


@pytest.mark.emulated
def test_emulated_ops_registered():
    for op in ("splat_render", "splat_render_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"imtok_cuda_emu::{op}", "CPU"), op


# ---- emulated CUDA kernels vs reference ----------------------------------------------------------------------
def emu_grads(g, f, size, grad, box_sigma=3.0, lengths=None, normalize=False):
    s = math.inf if box_sigma is None else box_sigma
    out = torch.ops.imtok_cuda_emu.splat_render(g, f, size[0], size[1], s, lengths, normalize) if normalize else None
    return torch.ops.imtok_cuda_emu.splat_render_backward(grad, g, f, out, size[0], size[1], s, lengths, normalize)


@pytest.mark.emulated
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("normalize", [False, True])
def test_emulated_forward_matches_reference(dtype, normalize):
    g, f = make_inputs(2, 9, 3, dtype)
    lengths = torch.tensor([9, 6])
    out = emu_render(g, f, (13, 11), 3.0, lengths, normalize)
    assert out.dtype == dtype and out.shape == (2, 3, 13, 11)
    rtol, atol = tol(dtype)
    torch.testing.assert_close(out, ref.render(g, f, (13, 11), 3.0, lengths, normalize), rtol=rtol, atol=atol)


@pytest.mark.emulated
def test_emulated_forward_many_tokens_tiles_and_channel_chunks():
    # 300 tokens: two staging rounds and several feature groups; 20 x 35: 2 x 3 tiles; C = 40: two chunks of 32
    g, f = make_inputs(1, 300, 40, torch.float32, sigma=(0.02, 0.2))
    lengths = torch.tensor([290])
    for box in (3.0, None):
        out = emu_render(g, f, (20, 35), box, lengths)
        torch.testing.assert_close(out, ref.render(g, f, (20, 35), box, lengths), rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(out, cpu_render(g, f, (20, 35), box, lengths), rtol=2e-5, atol=2e-5)


@pytest.mark.emulated
@pytest.mark.parametrize("dtype,C", [(torch.float64, 3), (torch.float32, 20), (torch.bfloat16, 3)])
@pytest.mark.parametrize("normalize", [False, True])
def test_emulated_backward_matches_reference(dtype, C, normalize):
    g, f = make_inputs(2, 9, C, dtype)
    size = (13, 11)
    lengths = torch.tensor([9, 7])
    grad = torch.randn(2, C, *size, dtype=torch.float64).to(dtype)
    dg, df = emu_grads(g, f, size, grad, lengths=lengths, normalize=normalize)
    assert dg.dtype == dtype and df.dtype == dtype
    eg, ef = ref_grads(g.double(), f.double(), size, grad.double(), lengths=lengths, normalize=normalize)
    rtol, atol = (1e-9, 1e-9) if dtype == torch.float64 else ((1e-4, 1e-4) if dtype == torch.float32 else (2e-2, 2e-2))
    for a, e in ((dg, eg), (df, ef)):
        sc = e.abs().max().item() + 1
        torch.testing.assert_close(a.double() / sc, e / sc, rtol=rtol, atol=atol)
    assert (dg[1, 7:] == 0).all() and (df[1, 7:] == 0).all()


@pytest.mark.emulated
def test_emulated_backward_channel_chunks_and_no_cutoff():
    g, f = make_inputs(1, 4, 40, torch.float64, sigma=(0.2, 0.5))
    size = (9, 7)
    grad = torch.randn(1, 40, *size, dtype=torch.float64)
    dg, df = emu_grads(g, f, size, grad, box_sigma=None)
    eg, ef = ref_grads(g, f, size, grad, box_sigma=None)
    torch.testing.assert_close(dg, eg, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(df, ef, rtol=1e-9, atol=1e-9)


@pytest.mark.emulated
def test_emulated_gradients_bitwise_repeatable():
    g, f = make_inputs(2, 6, 5, torch.float32, sigma=(0.1, 0.5))
    grad = torch.randn(2, 5, 12, 10)
    first = emu_grads(g, f, (12, 10), grad)
    again = emu_grads(g, f, (12, 10), grad)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    cpu = torch.ops.imtok_cuda.splat_render_backward(grad, g, f, None, 12, 10, 3.0, None, False)
    torch.testing.assert_close(first[0], cpu[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(first[1], cpu[1], rtol=1e-5, atol=1e-5)


# ---- conventions --------------------------------------------------------------------------------------------
def one_token(sx, sy, rho, mx, my, f, dtype=torch.float32):
    g = torch.tensor([[[sx, sy, rho, mx, my]]], dtype=dtype)
    return g, torch.tensor([[f]], dtype=dtype)


@pytest.mark.parametrize("impl", ["reference", "cpu", pytest.param("emulated", marks=pytest.mark.emulated)])
def test_centre_pixel_is_exactly_f(impl):
    # W = 9: x_j = j/4 - 1, so mu = 0.25 is pixel j = 5 exactly; H = 5: y_i = i/2 - 1, mu_y = 0.5 is i = 3.
    g, f = one_token(0.3, 0.2, 0.4, 0.25, 0.5, [1.7, -0.3])
    render = {"reference": ref.render, "cpu": cpu_render, "emulated": emu_render}[impl]
    out = render(g, f, (5, 9))
    assert torch.equal(out[0, :, 3, 5], f[0, 0])
    assert (out[0, 0] < 1.7).sum() == out[0, 0].numel() - 1


@pytest.mark.parametrize("impl", ["reference", "cpu", pytest.param("emulated", marks=pytest.mark.emulated)])
def test_box_edge_is_inclusive(impl):
    # W = H = 9: x_j = j/4 - 1 (exact); sigma = 0.25, s = 3: the box reaches |dx| = 0.75 exactly (pixels 1..7).
    g, f = one_token(0.25, 0.25, 0.0, 0.0, 0.0, [1.0])
    render = {"reference": ref.render, "cpu": cpu_render, "emulated": emu_render}[impl]
    out = render(g, f, (9, 9), 3.0)[0, 0]
    assert (out[4, 1:8] > 0).all() and out[4, 0] == 0 and out[4, 8] == 0
    assert (out[1:8, 4] > 0).all() and out[0, 4] == 0 and out[8, 4] == 0
    assert out[1, 1].item() == pytest.approx(math.exp(-9.0), rel=1e-6)  # the corner of the box is in
    # one notch smaller and the edge pixels drop out
    out2 = render(g, f, (9, 9), 2.999)[0, 0]
    assert out2[4, 1] == 0 and out2[4, 7] == 0 and out2[4, 2] > 0


@pytest.mark.parametrize("impl", ["cpu", pytest.param("emulated", marks=pytest.mark.emulated)])
def test_rho_positive_elongates_down_right(impl):
    render = {"cpu": cpu_render, "emulated": emu_render}[impl]
    g, f = one_token(0.3, 0.3, 0.6, 0.0, 0.0, [1.0])
    out = render(g, f, (9, 9))[0, 0]
    c = 4
    for k in (1, 2):  # i grows downwards (y), j rightwards (x)
        assert out[c + k, c + k] > out[c - k, c + k]
        assert out[c - k, c - k] > out[c + k, c - k]
    torch.testing.assert_close(out, out.flip(0).flip(1))


@pytest.mark.parametrize("impl", ["cpu", pytest.param("emulated", marks=pytest.mark.emulated)])
def test_swap_axes_transposes(impl):
    render = {"cpu": cpu_render, "emulated": emu_render}[impl]
    g, f = make_inputs(2, 8, 3, torch.float64)
    gt = g[..., [1, 0, 2, 4, 3]]
    a = render(g, f, (13, 11))
    b = render(gt, f, (11, 13))
    torch.testing.assert_close(b, a.transpose(2, 3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["cpu", pytest.param("emulated", marks=pytest.mark.emulated)])
def test_batch_equals_per_image(impl):
    render = {"cpu": cpu_render, "emulated": emu_render}[impl]
    g, f = make_inputs(3, 9, 4, torch.float32)
    out = render(g, f, (12, 17))
    for b in range(3):
        assert torch.equal(out[b:b + 1], render(g[b:b + 1], f[b:b + 1], (12, 17)))


@pytest.mark.parametrize("normalize", [False, True])
def test_token_permutation_invariance(normalize):
    g, f = make_inputs(2, 16, 3, torch.float32)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(cpu_render(g[:, perm], f[:, perm], (15, 14), normalize=normalize),
                               cpu_render(g, f, (15, 14), normalize=normalize), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["reference", "cpu", pytest.param("emulated", marks=pytest.mark.emulated)])
@pytest.mark.parametrize("normalize", [False, True])
def test_lengths_equal_truncated_renders(impl, normalize):
    render = {"reference": ref.render, "cpu": cpu_render, "emulated": emu_render}[impl]
    g, f = make_inputs(3, 9, 2, torch.float64)
    g[2, 5:] = 0.0  # padding may be garbage (sigma = 0): it must be ignored
    lengths = torch.tensor([9, 0, 5])
    out = render(g, f, (13, 11), lengths=lengths, normalize=normalize)
    for b in range(3):
        n = int(lengths[b])
        exp = render(g[b:b + 1, :n], f[b:b + 1, :n], (13, 11), normalize=normalize)
        torch.testing.assert_close(out[b:b + 1], exp, rtol=1e-12, atol=1e-12)


def test_lengths_backward_zero_for_padding():
    g, f = make_inputs(2, 6, 3, torch.float64)
    g = g.requires_grad_()
    f = f.requires_grad_()
    lengths = torch.tensor([6, 2], dtype=torch.int32)
    cpu_render(g, f, (9, 9), lengths=lengths).square().sum().backward()
    assert (g.grad[1, 2:] == 0).all() and (f.grad[1, 2:] == 0).all() and (g.grad[1, :2] != 0).any()


def test_cpu_gradients_bitwise_repeatable():
    g, f = make_inputs(4, 40, 8, torch.float32, sigma=(0.1, 0.5))
    grad = torch.randn(4, 8, 32, 32)
    res = []
    for _ in range(3):
        gg = g.clone().requires_grad_()
        ff = f.clone().requires_grad_()
        (cpu_render(gg, ff, (32, 32)) * grad).sum().backward()
        res.append((gg.grad, ff.grad))
    nt = torch.get_num_threads()
    try:  # the CPU kernels' sums do not depend on how the work is split across threads
        torch.set_num_threads(1)
        gg = g.clone().requires_grad_()
        ff = f.clone().requires_grad_()
        out1 = cpu_render(gg, ff, (32, 32))
        (out1 * grad).sum().backward()
        res.append((gg.grad, ff.grad))
    finally:
        torch.set_num_threads(nt)
    assert torch.equal(out1, cpu_render(g, f, (32, 32)))
    for a, b in res[1:]:
        assert torch.equal(a, res[0][0]) and torch.equal(b, res[0][1])


@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck_float64(normalize):
    g, f = make_inputs(2, 4, 3, torch.float64, sigma=(0.3, 0.6))
    g.requires_grad_()
    f.requires_grad_()
    lengths = torch.tensor([4, 3])
    fn = lambda a, b: splat.render(a, b, (7, 6), box_sigma=50.0, lengths=lengths, normalize=normalize)  # noqa
    assert torch.autograd.gradcheck(fn, (g, f), eps=1e-6, atol=1e-6)


def test_opcheck():
    g, f = make_inputs(2, 5, 3, torch.float32)
    g.requires_grad_()
    f.requires_grad_()
    op = torch.ops.imtok_cuda.splat_render.default
    torch.library.opcheck(op, (g, f, 7, 9, 3.0, None, False))
    torch.library.opcheck(op, (g, f, 7, 9, 3.0, torch.tensor([5, 2]), True))
    grad = torch.randn(2, 3, 7, 9)
    out = op(g.detach(), f.detach(), 7, 9, 3.0, None, True)
    torch.library.opcheck(torch.ops.imtok_cuda.splat_render_backward.default,
                          (grad, g.detach(), f.detach(), out, 7, 9, 3.0, None, True))


def test_torch_compile_fullgraph():
    g, f = make_inputs(2, 6, 3, torch.float32)

    def fn(a, b):
        return splat.render(a, b, (8, 10), box_sigma=3.0, normalize=False).square().sum()

    cfn = torch.compile(fn, fullgraph=True, backend="aot_eager")
    a = g.clone().requires_grad_()
    b = f.clone().requires_grad_()
    cfn(a, b).backward()
    a2 = g.clone().requires_grad_()
    b2 = f.clone().requires_grad_()
    fn(a2, b2).backward()
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


def test_bad_input():
    g, f = make_inputs(2, 5, 3, torch.float32)
    with pytest.raises(ValueError, match="geometry"):
        splat.render(g[..., :4], f, (8, 8))
    with pytest.raises(ValueError, match="features"):
        splat.render(g, f[:, :4], (8, 8))
    with pytest.raises(TypeError, match="geometry and features"):
        splat.render(g, f.double(), (8, 8))
    with pytest.raises(TypeError, match="geometry"):
        splat.render(g.int(), f.int(), (8, 8))
    with pytest.raises(ValueError, match="box_sigma"):
        splat.render(g, f, (8, 8), box_sigma=0.0)
    with pytest.raises(ValueError, match="size"):
        splat.render(g, f, (-1, 8))
    with pytest.raises(ValueError, match="lengths"):
        splat.render(g, f, (8, 8), lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="lengths"):
        splat.render(g, f, (8, 8), lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="lengths"):
        splat.render(g, f, (8, 8), lengths=torch.tensor([1, 6]))
    bad = g.clone()
    bad[1, 2, 0] = 0.0
    with pytest.raises(ValueError, match="sigma"):
        splat.render(bad, f, (8, 8))
    bad = g.clone()
    bad[0, 1, 2] = 1.0
    with pytest.raises(ValueError, match="rho"):
        splat.render(bad, f, (8, 8))
    # direct op calls are checked in C++ too (never a crash)
    with pytest.raises(ValueError, match="geometry"):
        torch.ops.imtok_cuda.splat_render(g[..., :3], f, 8, 8, 3.0, None, False)
    with pytest.raises(ValueError, match="box_sigma"):
        torch.ops.imtok_cuda.splat_render(g, f, 8, 8, -1.0, None, False)
    with pytest.raises(ValueError, match="grad_out"):
        torch.ops.imtok_cuda.splat_render_backward(torch.zeros(2, 3, 8, 7), g, f, None, 8, 8, 3.0, None, False)
    with pytest.raises(ValueError, match="out"):
        torch.ops.imtok_cuda.splat_render_backward(torch.zeros(2, 3, 8, 8), g, f, None, 8, 8, 3.0, None, True)


@pytest.mark.emulated
def test_bad_input_emulated():
    g, f = make_inputs(2, 4, 3, torch.float32)
    with pytest.raises(ValueError, match="features"):
        torch.ops.imtok_cuda_emu.splat_render(g, f[:, :3], 8, 8, 3.0, None, False)
    bad = g.clone()
    bad[0, 1, 2] = 1.0
    with pytest.raises(ValueError, match="rho"):  # value checks on every device, as the CPU kernel
        torch.ops.imtok_cuda_emu.splat_render(bad, f, 8, 8, 3.0, None, False)


# ---- real GPU -----------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("normalize", [False, True])
def test_cuda_matches_cpu_and_reference(dtype, normalize):
    g, f = make_inputs(4, 300, 20, dtype, sigma=(0.02, 0.2))
    lengths = torch.tensor([300, 120, 0, 299])
    size = (70, 45)
    grad = torch.randn(4, 20, *size).to(dtype)
    res = {}
    for dev in ("cpu", "cuda"):
        gg = g.to(dev).requires_grad_()
        ff = f.to(dev).requires_grad_()
        out = splat.render(gg, ff, size, lengths=lengths.to(dev), normalize=normalize)
        (out * grad.to(dev)).sum().backward()
        res[dev] = (out.cpu().double(), gg.grad.cpu().double(), ff.grad.cpu().double())
    rtol, atol = tol(dtype)
    rtol, atol = max(rtol, 1e-4), max(atol, 1e-4)
    for a, b in zip(res["cuda"], res["cpu"]):
        s = b.abs().max().item() + 1
        torch.testing.assert_close(a / s, b / s, rtol=rtol, atol=atol)
    exp = ref.render(g.cuda(), f.cuda(), size, lengths=lengths.cuda(), normalize=normalize).cpu().double()
    torch.testing.assert_close(res["cuda"][0], exp, rtol=rtol, atol=atol)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_cuda_gradients_bitwise_repeatable():
    g, f = make_inputs(8, 500, 32, torch.float32, sigma=(0.02, 0.3))
    g, f = g.cuda(), f.cuda()
    grad = torch.randn(8, 32, 64, 64, device="cuda")
    res = []
    for _ in range(3):
        gg = g.clone().requires_grad_()
        ff = f.clone().requires_grad_()
        (splat.render(gg, ff, (64, 64)) * grad).sum().backward()
        res.append((gg.grad, ff.grad))
    for a, b in res[1:]:
        assert torch.equal(a, res[0][0]) and torch.equal(b, res[0][1])


# ---- entropy-driven initial partition -----------------------------------------------------------------------
def _regions(geo, H, W):
    """Recover the inclusive pixel boxes from the partition's geometry."""
    out = []
    for sx, sy, rho, mx, my in geo.tolist():
        assert rho == 0.0
        w = round(sx * W * 1.5) + 1
        h = round(sy * H * 1.5) + 1
        cx = (mx / 2 + 0.5) * (W - 1)
        cy = (my / 2 + 0.5) * (H - 1)
        out.append((round(cy - (h - 1) / 2), h, round(cx - (w - 1) / 2), w))
    return out


def test_entropy_partition_flat_image_is_deterministic_quadrants():
    img = torch.zeros(2, 3, 64, 64)
    geo = splat.entropy_partition(img, 4)
    assert geo.shape == (2, 4, 5) and geo.dtype == torch.float32
    s = 31 / 64 * 2 / 3
    c = (15.5 / 63 - 0.5) * 2
    # square -> rows split on the tie, then the top (first in the stable order) splits into columns, then the bottom
    exp = torch.tensor([[s, s, 0, c, c], [s, s, 0, -c, c], [s, s, 0, c, -c], [s, s, 0, -c, -c]])
    torch.testing.assert_close(geo[0], exp)
    assert torch.equal(geo[0], geo[1])
    assert torch.equal(splat.entropy_partition(img[:1], 7), splat.entropy_partition(img[:1], 7))


def test_entropy_partition_min_side_and_tiling():
    img = torch.rand(1, 1, 16, 16) * 2 - 1
    geo = splat.entropy_partition(img, 4)
    assert sorted(_regions(geo[0], 16, 16)) == [(0, 8, 0, 8), (0, 8, 8, 8), (8, 8, 0, 8), (8, 8, 8, 8)]
    with pytest.raises(ValueError, match="minhw"):
        splat.entropy_partition(img, 5)  # 8 x 8 regions span 7 <= minhw pixels: no further split
    img = torch.rand(1, 3, 40, 56) * 2 - 1
    regions = _regions(splat.entropy_partition(img, 12)[0], 40, 56)
    assert sum(h * w for _, h, _, w in regions) == 40 * 56
    cover = torch.zeros(40, 56, dtype=torch.int32)
    for y0, h, x0, w in regions:
        cover[y0:y0 + h, x0:x0 + w] += 1
        assert h >= 4 and w >= 4
    assert (cover == 1).all()


def test_entropy_partition_follows_texture():
    img = torch.zeros(1, 1, 64, 64)
    img[..., 32:, :32] = torch.rand(32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    geo = splat.entropy_partition(img, 10)[0]
    in_texture = ((geo[:, 3] < 0) & (geo[:, 4] > 0)).sum().item()  # bottom-left quadrant: x < 0, y > 0
    assert in_texture >= 6
    assert splat.region_complexity(img[0, 0, 32:, :32]) > 1e3 * splat.region_complexity(img[0, 0, :32, 32:])


def test_entropy_partition_bad_input():
    with pytest.raises(ValueError, match="images"):
        splat.entropy_partition(torch.zeros(1, 2, 16, 16), 4)
    with pytest.raises(ValueError, match="n_tokens"):
        splat.entropy_partition(torch.zeros(1, 3, 16, 16), 0)


# ---- nn module and GPSToken interface -----------------------------------------------------------------------
def test_geometry_from_logits_domain_and_inverse():
    from imtok_cuda.nn.splat import geometry_from_logits, logits_from_geometry
    raw = torch.randn(3, 7, 5, dtype=torch.float64) * 4
    raw[0, 0] = torch.tensor([-100.0, 100.0, 100.0, -100.0, 100.0])
    geo = geometry_from_logits(raw)
    assert (geo[..., :2] >= 1e-5).all() and (geo[..., :2] <= 0.99999).all()
    assert (geo[..., 2:].abs() <= 0.99999).all()
    torch.testing.assert_close(geo[0, 0], torch.tensor([1e-5, 0.99999, 0.99999, -0.99999, 0.99999],
                                                       dtype=torch.float64))
    torch.testing.assert_close(geometry_from_logits(logits_from_geometry(geo[1:])), geo[1:])
    torch.testing.assert_close(geo[1:, :, :2], torch.sigmoid(raw[1:, :, :2]).clamp(1e-5, 0.99999))
    torch.testing.assert_close(geo[1:, :, 2:], (2 * torch.sigmoid(raw[1:, :, 2:]) - 1).clamp(-0.99999, 0.99999))


def test_renderer_module():
    from imtok_cuda.nn.splat import GaussianSplatRenderer, geometry_from_logits
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    geo = splat.entropy_partition(img, 8)
    tex = torch.randn(2, 8, 6)
    m = GaussianSplatRenderer((24, 20), box_sigma=3.0)
    out = m(geo, tex)
    assert out.shape == (2, 6, 24, 20)
    torch.testing.assert_close(out, ref.render(geo, tex, (24, 20)), rtol=1e-5, atol=1e-5)
    assert torch.equal(m(torch.cat([geo, tex], -1)), out)
    lengths = torch.tensor([8, 3])
    mn = GaussianSplatRenderer(16, box_sigma=None, normalize=True)
    torch.testing.assert_close(mn(geo, tex, lengths=lengths), ref.render(geo, tex, (16, 16), None, lengths, True),
                               rtol=1e-5, atol=1e-5)
    raw = torch.randn(2, 8, 5, requires_grad=True)
    t = tex.clone().requires_grad_()
    m(geometry_from_logits(raw), t).square().mean().backward()
    assert raw.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
    assert "box_sigma=3.0" in repr(m)
