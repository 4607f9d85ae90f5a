"""FasterVLM on a transformers CLIPVisionModel (random weights from a tiny config): the kept features and
positions equal the anchor's way (output_attentions=True with eager attention, hidden_states[-2], the CLS row of
attentions[-2], top-k kept in spatial order); per-sample keep counts come packed; fused == reference path."""
import pytest
import torch

import imtok
from imtok.reduction import fastervlm

transformers = pytest.importorskip("transformers", reason="transformers (the [vlm] extra) is not installed")


def _tower(attn="sdpa"):
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                           num_attention_heads=4, image_size=48, patch_size=8)
    config._attn_implementation = attn
    return transformers.CLIPVisionModel(config).double().eval()


def _pixels(b=3):
    return torch.randn(b, 3, 48, 48, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _anchor(model, pixels, k, select_layer=-2):
    """LLaVA + FasterVLM: every attention map returned, features of hidden_states[-2], CLS row of that layer."""
    with torch.no_grad():
        out = model(pixels, output_attentions=True, output_hidden_states=True)
    feats = out.hidden_states[select_layer][:, 1:]
    scores = out.attentions[select_layer][:, :, 0, 1:].mean(1)
    idx = scores.topk(k, dim=1).indices.sort(dim=1).values  # kept in spatial order
    return feats.gather(1, idx[..., None].expand(-1, -1, feats.shape[-1])), idx, scores


@pytest.mark.parametrize("select_layer", [-2, -1, -4])
def test_equals_output_attentions_topk(select_layer):
    model = _tower("eager")
    pixels = _pixels()
    feats, idx, scores = _anchor(model, pixels, 9, select_layer)
    for reference in (False, True):
        with torch.no_grad(), imtok.use_reference(reference):
            res = fastervlm(model, pixels, keep=0.25, select_layer=select_layer)  # 25% of 36 patches = 9
        assert res.cu_seqlens is None
        assert torch.equal(res.positions, idx)
        torch.testing.assert_close(res.features, feats)
        torch.testing.assert_close(res.scores, scores)


def test_per_sample_keep_counts_are_packed():
    model = _tower()
    pixels = _pixels()
    counts = [4, 9, 1]
    with torch.no_grad():
        res = fastervlm(model, pixels, keep=counts)
    assert res.cu_seqlens.tolist() == [0, 4, 13, 14]
    assert res.features.shape == (14, 32) and res.positions.shape == (14,)
    for b, k in enumerate(counts):
        feats, idx, _ = _anchor(_tower("eager"), pixels[b:b + 1], k)
        s, e = res.cu_seqlens[b], res.cu_seqlens[b + 1]
        assert torch.equal(res.positions[s:e], idx[0])
        torch.testing.assert_close(res.features[s:e], feats[0])
    with torch.no_grad():
        one = fastervlm(model, pixels, keep=5)
    assert one.features.shape == (3, 5, 32) and one.positions.shape == (3, 5)


def test_bad_arguments():
    model = _tower()
    with pytest.raises(ValueError, match="select_layer"):
        fastervlm(model, _pixels(1), select_layer=-5)
    with pytest.raises(ValueError, match="keep"):
        fastervlm(model, _pixels(2), keep=[1])
    with pytest.raises(ValueError, match="keep"):
        fastervlm(model, _pixels(1), keep=37)
    with pytest.raises(ValueError, match="CLIP"):
        fastervlm(torch.nn.Linear(2, 2), _pixels(1))
