"""tomesd on a diffusers UNet2DConditionModel (random weights from a tiny config): outputs equal PyPI tomesd
0.1.3's apply_patch on the same UNet with the same seed, step after step; fused == reference path; pipelines;
remove_tomesd restores the UNet."""
import copy

import pytest
import torch

import imtok
from imtok.reduction import apply_tomesd, remove_tomesd

diffusers = pytest.importorskip("diffusers", reason="diffusers (the [diffusion] extra) is not installed")
tomesd = pytest.importorskip("tomesd", reason="tomesd (the [diffusion] test extra) is not installed")


@pytest.fixture(scope="module")
def base_unet():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, attention_head_dim=8, norm_num_groups=8)
    return unet.eval()


@pytest.fixture(scope="module")
def sdxl_like_unet():
    """The SD 2.x / SDXL block options: linear projections, two transformer layers per block, per-level heads."""
    torch.manual_seed(1)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=2, norm_num_groups=8)
    return unet.eval()


def test_equals_pypi_tomesd_on_sd2_sdxl_blocks(sdxl_like_unet):
    inputs = _inputs()
    kwargs = dict(ratio=0.6, max_downsample=2)
    theirs = _steps(copy.deepcopy(sdxl_like_unet), lambda u: tomesd.apply_patch(u, **kwargs), inputs)
    ours = _steps(copy.deepcopy(sdxl_like_unet), lambda u: apply_tomesd(u, **kwargs), inputs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _inputs(b=2, h=12, w=10):
    g = torch.Generator().manual_seed(5)
    return torch.randn(b, 4, h, w, generator=g), torch.tensor(10), torch.randn(b, 3, 12, generator=g)


def _steps(unet, patch, inputs, steps=2, seed=1234):
    patch(unet)
    torch.manual_seed(seed)  # both patches fork their generator from the global RNG on the first call
    outs = []
    with torch.no_grad():
        for _ in range(steps):
            outs.append(unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample)
    return outs


@pytest.mark.parametrize("kwargs, batch, check_reference", [
    (dict(), 2, True),
    (dict(ratio=0.4, max_downsample=2, merge_crossattn=True, merge_mlp=True), 2, False),
    (dict(use_rand=False, sx=3, sy=2), 2, False),
    (dict(), 1, True),  # an odd batch turns the random destinations off, as tomesd does
])
def test_equals_pypi_tomesd(base_unet, kwargs, batch, check_reference):
    unet = base_unet
    inputs = _inputs(batch)
    theirs = _steps(copy.deepcopy(unet), lambda u: tomesd.apply_patch(u, **kwargs), inputs)
    ours = _steps(copy.deepcopy(unet), lambda u: apply_tomesd(u, **kwargs), inputs)
    for a, b in zip(ours, theirs):  # two steps: the generator advances alike
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if check_reference:
        with imtok.use_reference():
            ref = _steps(copy.deepcopy(unet), lambda u: apply_tomesd(u, **kwargs), inputs, steps=1)
        torch.testing.assert_close(ref[0], theirs[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        plain = unet(*inputs[:2], encoder_hidden_states=inputs[2]).sample
    assert not torch.allclose(ours[0], plain, atol=1e-4)  # merging changed something


def test_latent_size_hook_and_pipeline(base_unet):
    class TinyPipeline(diffusers.DiffusionPipeline):
        def __init__(self, unet):
            super().__init__()
            self.register_modules(unet=unet)

    unet = base_unet
    pipe = TinyPipeline(copy.deepcopy(unet))
    assert apply_tomesd(pipe, ratio=0.5) is pipe
    for h, w in ((12, 10), (8, 8)):  # the hook records every call's latent size (sample passed by keyword too)
        x, t, ctx = _inputs(2, h, w)
        with torch.no_grad():
            pipe.unet(sample=x, timestep=t, encoder_hidden_states=ctx)
        assert pipe.unet._tome_info["size"] == (h, w)
    ref_pipe = TinyPipeline(copy.deepcopy(unet))
    tomesd.apply_patch(ref_pipe, ratio=0.5)
    inputs = _inputs()
    torch.manual_seed(7)
    pipe.unet._tome_info["args"]["generator"] = None
    with torch.no_grad():
        ours = pipe.unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample
        torch.manual_seed(7)
        theirs = ref_pipe.unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_remove_restores_the_unet_exactly(base_unet):
    base = base_unet
    unet = copy.deepcopy(base)
    inputs = _inputs()
    apply_tomesd(unet, ratio=0.5)
    apply_tomesd(unet, ratio=0.3)  # re-applying replaces the patch (one hook, one patch)
    assert len(unet._tome_info["hooks"]) == 1
    remove_tomesd(unet)
    assert [type(m) for m in unet.modules()] == [type(m) for m in base.modules()]
    assert not any(hasattr(m, "_tome_info") for m in unet.modules())
    assert not unet._forward_pre_hooks
    with torch.no_grad():
        a = unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample
        b = base(inputs[0], inputs[1], encoder_hidden_states=inputs[2]).sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_rejects_bad_arguments(base_unet):
    with pytest.raises(ValueError, match="ratio"):
        apply_tomesd(copy.deepcopy(base_unet), ratio=1.0)
    with pytest.raises(ValueError, match="UNet"):
        apply_tomesd(torch.nn.Linear(2, 2))


def test_equals_pypi_tomesd_on_ada_norm_zero_blocks():
    """DiT's transformer (BasicTransformerBlock with ada_norm_zero), patched directly as tomesd allows."""
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, sample_size=12,
                                          patch_size=2, num_layers=2, num_embeds_ada_norm=10).eval()
    x, t, y = torch.randn(2, 4, 12, 12), torch.tensor([3, 5]), torch.tensor([1, 2])

    def run(patch):
        model = copy.deepcopy(dit)
        patch(model)
        torch.manual_seed(3)
        with torch.no_grad():
            return model(x, timestep=t, class_labels=y).sample

    theirs = run(lambda m: tomesd.apply_patch(m, ratio=0.5, max_downsample=2))  # 2x2 patches: downsample 2
    ours = run(lambda m: apply_tomesd(m, ratio=0.5, max_downsample=2))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, run(lambda m: None), atol=1e-4)
