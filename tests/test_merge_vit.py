"""ToMe on timm VisionTransformers (and imtok.models.vit): the official patch's outputs (a fixture made with
facebookresearch/ToMe), fused path == reference path (imtok.use_reference()), remove_tome restores the model."""
import copy
import os

import pytest
import torch

import imtok
from imtok.models.vit import VisionTransformer
from imtok.reduction import apply_tome, parse_r, remove_tome

timm = pytest.importorskip("timm", reason="timm (the [models] extra) is not installed")
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tome_official", "tome_timm.pt")


def _timm_vit(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=5)
    args.update(kw)
    model = TimmViT(**args)
    for p in model.parameters():  # timm's init leaves zeros (class token, biases): make every weight count
        p.data.normal_(0, 0.2)
    return model.to(dtype).eval()


def _img(b=2, size=32, dtype=torch.float64):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_parse_r():
    assert parse_r(4, 8) == [8, 8, 8, 8]
    assert parse_r(3, (8, -1.0)) == [16, 8, 0]
    assert parse_r(4, [1, 2]) == [1, 2, 0, 0]


@pytest.mark.parametrize("case", ["cls", "cls_schedule", "cls_clamp", "distilled", "no_class_token"])
def test_equals_official_tome(case):
    data = torch.load(FIXTURE, weights_only=False)
    c = data["cases"][case]
    cls = {"VisionTransformer": TimmViT, "VisionTransformerDistilled": VisionTransformerDistilled}[c["class"]]
    model = cls(**c["kwargs"]).eval()
    model.load_state_dict(data["state_dicts"][c["state_dict"]])
    model.double()
    apply_tome(model, trace_source=True)
    model.r = c["r"]  # the official API: r set after patching
    x = data["input"].double()
    for reference in (False, True):
        with torch.no_grad(), imtok.use_reference(reference):
            logits = model(x)
        torch.testing.assert_close(logits, c["logits"], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model._tome_info["size"].float(), c["size"], rtol=0, atol=0)
        assert torch.equal(model._tome_info["source"].bool(), c["source"])


def test_r_clamp_and_sizes_on_imtok_vit():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=224, patch_size=16, embed_dim=32, depth=3, num_heads=2,
                              num_classes=10).double().eval()
    apply_tome(model, r=200)
    with torch.no_grad():
        model(_img(1, 224))
    assert model.token_counts == [197, 99, 50, 26]  # r clamps to (T - 1) // 2 each block
    assert model._tome_info["size"].shape == (1, 26, 1)
    assert float(model._tome_info["size"].sum()) == 197.0


@pytest.mark.parametrize("layout", [dict(), dict(reg_tokens=2), dict(class_token=False, global_pool="avg"),
                                    dict(init_values=0.5, qk_norm=True), dict(reg_tokens=1, class_token=False,
                                                                               global_pool="avg")])
def test_fused_matches_reference_on_timm_layouts(layout):
    model = apply_tome(_timm_vit(**layout), r=(9, -0.5), trace_source=True)
    x = _img()
    with torch.no_grad():
        fused = model(x)
        size, source = model._tome_info["size"], model._tome_info["source"]
        with imtok.use_reference():
            ref = model(x)
    torch.testing.assert_close(fused, ref)
    torch.testing.assert_close(size, model._tome_info["size"])
    torch.testing.assert_close(source.float(), model._tome_info["source"].float())
    # sizes count the input tokens; the sources partition them; prefix (class / register) tokens stay alone
    prefix = model.num_prefix_tokens
    assert float(size[0].sum()) == 64 + prefix
    assert torch.equal(source.sum(1), torch.ones(2, 64 + prefix))
    assert torch.equal(size[:, :prefix, 0], torch.ones(2, prefix))


def test_remove_restores_the_model_exactly():
    base = _timm_vit(init_values=0.5)
    model = copy.deepcopy(base)
    x = _img()
    apply_tome(model, r=8)
    with torch.no_grad():
        merged = model(x)
    remove_tome(model)
    assert type(model) is TimmViT and all(type(b) is type(base.blocks[0]) for b in model.blocks)
    assert not any(hasattr(m, "_tome_info") or hasattr(m, "_tome_index") for m in model.modules())
    assert not hasattr(model, "r")
    assert model.state_dict().keys() == base.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)
        assert not torch.allclose(merged, base(x))
        # r = 0 merges nothing: the patched model gives the original outputs
        torch.testing.assert_close(apply_tome(copy.deepcopy(base), r=0)(x), base(x))


def test_backward_fused_matches_reference():
    base = _timm_vit(embed_dim=16, depth=2).train()
    x = _img()
    grads = []
    for reference in (False, True):
        model = apply_tome(copy.deepcopy(base), r=12)
        with imtok.use_reference(reference):
            model(x).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][n], msg=n)


def test_rejects_what_it_cannot_patch():
    with pytest.raises(ValueError, match="blocks"):
        apply_tome(torch.nn.Linear(2, 2), r=4)
    model = _timm_vit()
    model.blocks[1] = torch.nn.Identity()
    with pytest.raises(ValueError, match="block 1"):
        apply_tome(model, r=4)
