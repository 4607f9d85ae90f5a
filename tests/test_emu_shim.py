"""The CUDA emulation shim itself (emulated shim_selftest kernels): correct kernels give the right answers, broken ones are reported.

Every emulated kernel test in this suite relies on these guarantees, so they are tested directly."""
import pytest
import torch

CASES = {"block_sum": 0, "warp_votes": 1, "atomic_sum": 2, "missing_barrier": 3, "out_of_bounds": 4,
         "early_exit": 5, "different_sites": 6, "warp_no_sync": 7}


def run(emu, case, x=None):
    x = torch.randn(128) if x is None else x
    return emu.shim_selftest(CASES[case], x), x


def test_block_reduction_with_barriers_and_shuffles(emu):
    x = torch.arange(128, dtype=torch.float32)
    out, _ = run(emu, "block_sum", x)
    assert out[0].item() == x.sum().item()


def test_warp_votes_and_shuffles(emu):
    x = torch.randn(128)
    out, _ = run(emu, "warp_votes", x)
    out = out.view(128, 6)
    for t in range(128):
        w = slice(t // 32 * 32, t // 32 * 32 + 32)
        pos = x[w] > 0
        assert out[t, 0] == pos.sum()
        assert out[t, 1] == float(pos.any()) and out[t, 2] == float(pos.all())
        assert out[t, 3] == x[t ^ 1]
        assert out[t, 4] == (x[t - 1] if t % 32 else x[t])  # shfl_up: lane 0 keeps its own value
        assert out[t, 5] == x[t // 32 * 32 + 5]


def test_atomics(emu):
    x = torch.ones(128)
    out, _ = run(emu, "atomic_sum", x)
    assert out[0].item() == 128.0


@pytest.mark.parametrize("case,message", [
    ("missing_barrier", "data race on shared memory"),
    ("warp_no_sync", "data race on shared memory"),
    ("out_of_bounds", "out of bounds"),
    ("early_exit", "barrier divergence"),
    ("different_sites", "different __syncthreads sites"),
])
def test_broken_kernels_are_reported(emu, case, message):
    # the detector is deterministic: repeat to show it does not depend on thread scheduling
    for _ in range(3):
        with pytest.raises(RuntimeError, match=message):
            run(emu, case)


def test_shim_recovers_after_an_error(emu):
    with pytest.raises(RuntimeError):
        run(emu, "missing_barrier")
    x = torch.arange(128, dtype=torch.float32)
    assert run(emu, "block_sum", x)[0][0].item() == x.sum().item()


# ---- emulated wmma (tensor-core tiles) ------------------------------------------------------------------
WMMA = {"gemm": 0, "no_syncwarp": 1, "divergent": 2, "misaligned": 3}


def wmma_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    # small integers: every product and sum is exact in fp32, so the result must be exact
    a = torch.randint(-4, 5, (32, 32), generator=g).half()
    b = torch.randint(-4, 5, (32, 32), generator=g).half()
    return a, b


def test_wmma_gemm_row_and_col_major(emu):
    a, b = wmma_inputs()
    out = emu.shim_wmma_selftest(WMMA["gemm"], a, b)
    assert torch.equal(out[0], a.float() @ b.float())    # B loaded row-major
    assert torch.equal(out[1], a.float() @ b.float().t())  # B loaded col-major: A B^T


@pytest.mark.parametrize("case,message", [
    ("no_syncwarp", "data race on shared memory"),
    ("divergent", "different wmma::"),
    ("misaligned", "not 32-byte aligned"),
])
def test_broken_wmma_kernels_are_reported(emu, case, message):
    a, b = wmma_inputs()
    for _ in range(2):
        with pytest.raises(RuntimeError, match=message):
            emu.shim_wmma_selftest(WMMA[case], a, b)
