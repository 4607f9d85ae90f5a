"""ToMe in a ViT and tomesd in a diffusion transformer block: fused kernels vs the reference, token counts."""
import copy

import pytest
import torch

from imtok.models.vit import VisionTransformer
from imtok.reduction.tome import apply_tome, parse_r, remove_tome
from imtok.reduction.tomesd import BasicTransformerBlock, apply_tomesd, remove_tomesd


def _vit(depth=3, dim=64, heads=2, dtype=torch.float64):
    torch.manual_seed(0)
    return VisionTransformer(img_size=224, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads,
                             num_classes=10).to(dtype).eval()


def test_parse_r():
    assert parse_r(4, 8) == [8, 8, 8, 8]
    assert parse_r(3, (8, -1.0)) == [16, 8, 0]
    assert parse_r(4, [1, 2]) == [1, 2, 0, 0]


def test_r_clamp_in_vit():
    model = apply_tome(_vit(depth=3), r=200)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        model(x)
    assert model.token_counts == [197, 99, 50, 26]  # r clamps to (T - 1) // 2 each block
    assert model._tome_info["size"].shape == (1, 26, 1)
    assert float(model._tome_info["size"].sum()) == 197.0


@pytest.mark.parametrize("r", [13, (16, -0.5)])
def test_fused_vit_matches_reference(r):
    base = _vit(depth=4)
    fused = apply_tome(copy.deepcopy(base), r=r, trace_source=True, fused=True)
    ref = apply_tome(copy.deepcopy(base), r=r, trace_source=True, fused=False)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        a, b = fused(x), ref(x)
    torch.testing.assert_close(a, b)
    assert fused.token_counts == ref.token_counts
    torch.testing.assert_close(fused._tome_info["size"], ref._tome_info["size"])
    torch.testing.assert_close(fused._tome_info["source"], ref._tome_info["source"].to(torch.float32))
    # the sources partition the input tokens
    assert torch.equal(fused._tome_info["source"].sum(1), torch.ones(2, 197))
    # without merging the patched model is the original one
    torch.testing.assert_close(apply_tome(copy.deepcopy(base), r=0)(x), base(x))
    torch.testing.assert_close(remove_tome(fused)(x), base(x))


def test_fused_vit_backward_matches_reference():
    base = _vit(depth=2, dim=32).train()
    fused = apply_tome(copy.deepcopy(base), r=20, fused=True)
    ref = apply_tome(copy.deepcopy(base), r=20, fused=False)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    fused(x).square().sum().backward()
    ref(x).square().sum().backward()
    for (n, p), (_, q) in zip(fused.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


@pytest.mark.parametrize("merge_mlp", [False, True])
def test_tomesd_block_matches_reference(merge_mlp):
    torch.manual_seed(0)
    base = BasicTransformerBlock(32, 2, context_dim=16).double()
    h, w = 12, 10
    x = torch.randn(2, h * w, 32, dtype=torch.float64)
    ctx = torch.randn(2, 7, 16, dtype=torch.float64)
    fused = apply_tomesd(copy.deepcopy(base), 0.5, 2, 2, size=(h, w), merge_mlp=merge_mlp,
                         generator=torch.Generator().manual_seed(3))
    ref = apply_tomesd(copy.deepcopy(base), 0.5, 2, 2, size=(h, w), merge_mlp=merge_mlp, fused=False,
                       generator=torch.Generator().manual_seed(3))
    for _ in range(2):  # the generator advances identically
        torch.testing.assert_close(fused(x, ctx), ref(x, ctx))
    # ratio 0 merges nothing; at a downsampled resolution above max_downsample it is the plain block
    torch.testing.assert_close(apply_tomesd(copy.deepcopy(base), 0.0, size=(h, w))(x, ctx), base(x, ctx))
    x4 = torch.randn(2, (h // 2) * (w // 2), 32, dtype=torch.float64)
    torch.testing.assert_close(fused(x4, ctx), base(x4, ctx))
    torch.testing.assert_close(remove_tomesd(fused)(x, ctx), base(x, ctx))


def test_tomesd_bad_input():
    with pytest.raises(ValueError, match="ratio"):
        apply_tomesd(BasicTransformerBlock(8, 2), 1.5, size=(4, 4))
    with pytest.raises(ValueError, match="norm1"):
        apply_tomesd(torch.nn.Linear(2, 2), 0.5)
