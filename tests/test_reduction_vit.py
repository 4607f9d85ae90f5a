"""EViT and GTP-ViT on timm VisionTransformers: against an explicit-attention restatement of the official math
(written here, sharing nothing with imtok.reduction), fused == reference path, remove_* restores the model.
Also the shared attention entry (imtok.layers.self_attention) that every patch runs on."""
import copy
import math

import pytest
import torch

import imtok
from imtok.layers import Attention, self_attention
from imtok.models import VisionTransformer
from imtok.reduction import apply_evit, apply_gtp, remove_evit, remove_gtp
from imtok_cuda.reference import prune as R

timm = pytest.importorskip("timm", reason="timm (the [models] extra) is not installed")
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402


def _timm_vit(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=5)
    args.update(kw)
    model = TimmViT(**args)
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    return model.to(dtype).eval()


def _img(b=2, size=32, dtype=torch.float64):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)


# ---- the official math, restated with explicit attention maps -------------------------------------------------
def explicit_attention(attn, x, bias=None):
    """timm Attention with the softmax map spelled out: (out, map [B, H, N, N])."""
    B, N, C = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias[:, None, None, :]
    p = logits.softmax(-1)
    out = attn.norm((p @ v).transpose(1, 2).reshape(B, N, -1))
    return attn.proj(out), p


def embed(model, img):
    x = model._pos_embed(model.patch_embed(img))
    return model.norm_pre(model.patch_drop(x))


def head(model, x):
    return model.forward_head(model.norm(x))


def evit_restated(model, img, keep_rate, layers, fuse=True):
    x = embed(model, img)
    for i, blk in enumerate(model.blocks):
        out, p = explicit_attention(blk.attn, blk.norm1(x))
        x = x + blk.ls1(out)
        B, N, C = x.shape
        left = math.ceil(keep_rate * (N - 1))
        if i in layers and left < N - 1:
            cls_attn = p[:, :, 0, 1:].mean(1)
            _, idx = torch.topk(cls_attn, left, dim=1, largest=True, sorted=True)
            non_cls = x[:, 1:]
            kept = non_cls.gather(1, idx[..., None].expand(-1, -1, C))
            parts = [x[:, :1], kept]
            if fuse:
                dropped = torch.ones_like(cls_attn, dtype=torch.bool).scatter(1, idx, False)
                parts.append((non_cls * (cls_attn * dropped)[..., None]).sum(1, keepdim=True))
            x = torch.cat(parts, 1)
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    return head(model, x)


def spatial_graph(m, dtype):
    side = int(math.isqrt(m))
    a = torch.zeros(m, m, dtype=dtype)
    for i in range(side):
        for j in range(side):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if (di or dj) and 0 <= i + di < side and 0 <= j + dj < side:
                        a[i * side + j, (i + di) * side + j + dj] = 1
    return a


def gtp_restated(model, img, num_prop, graph_type, k, alpha):
    x = embed(model, img)
    B, N, C = x.shape
    a = spatial_graph(N - 1, x.dtype).expand(B, -1, -1)
    if graph_type == "mixed":
        a = ((a + R.gtp_semantic_graph(x[:, 1:], k)) > 0).to(x.dtype)
    d = a.sum(-1) ** -0.5
    g = d[:, :, None] * a * d[:, None, :]
    scales = torch.ones(B, N, dtype=x.dtype)
    counts = []
    for blk in model.blocks:
        counts.append(x.shape[1])
        out, p = explicit_attention(blk.attn, blk.norm1(x), scales.log())
        x = x + blk.ls1(out)
        P = min(num_prop, x.shape[1] - 2)
        if P > 0:
            rank = torch.diagonal(p, dim1=-2, dim2=-1)[:, :, 1:].amax(1) * p[:, :, :, 1:].sum(-2).amax(1)
            order = torch.argsort(rank, dim=1, descending=True)
            kept, prop = order[:, :-P], order[:, -P:]  # image-token indices (CLS excluded)
            img_x, img_s = x[:, 1:], scales[:, 1:]
            rows = g.gather(1, kept[..., None].expand(-1, -1, g.shape[2]))
            w_prop = rows.gather(2, prop[:, None, :].expand(-1, rows.shape[1], -1))
            g = rows.gather(2, kept[:, None, :].expand(-1, rows.shape[1], -1))
            pick = lambda t, i: t.gather(1, i[..., None].expand(-1, -1, t.shape[2]))  # noqa: E731
            new_x = pick(img_x, kept) + alpha * w_prop @ pick(img_x, prop)
            new_s = img_s.gather(1, kept) + alpha * (w_prop @ img_s.gather(1, prop)[..., None])[..., 0]
            x = torch.cat([x[:, :1], new_x], 1)
            scales = torch.cat([scales[:, :1], new_s], 1)
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
    counts.append(x.shape[1])
    return head(model, x), counts


# ---- EViT ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("layout", [dict(), dict(init_values=0.3, qk_norm=True, global_pool="avg")])
def test_evit_equals_restated_official_math(fuse, layout):
    model = _timm_vit(**layout)
    img = _img()
    with torch.no_grad():
        expected = evit_restated(model, img, 0.6, (1, 2), fuse)
        apply_evit(model, keep_rate=0.6, layers=(1, 2), fuse_token=fuse)
        fused = model(img)
        with imtok.use_reference():
            ref = model(img)
    torch.testing.assert_close(fused, expected)
    torch.testing.assert_close(ref, expected)


def test_evit_deit_s_token_counts():
    """DeiT-S at keep 0.7 on blocks (3, 6, 9): 197 -> 140 -> 100 -> 72 tokens (a narrow DeiT-S: same counts)."""
    model = _timm_vit(torch.float32, img_size=224, patch_size=16, embed_dim=48, depth=12, num_heads=3)
    counts = []
    for blk in model.blocks:
        blk.register_forward_pre_hook(lambda m, args: counts.append(args[0].shape[1]))
    apply_evit(model, keep_rate=0.7, layers=(3, 6, 9))
    with torch.no_grad():
        model(_img(1, 224, torch.float32))
    assert counts == [197] * 4 + [140] * 3 + [100] * 3 + [72] * 2


def test_evit_on_imtok_vit_and_remove():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=224, patch_size=16, embed_dim=48, depth=12, num_heads=3).eval()
    base = copy.deepcopy(model)
    img = _img(1, 224, torch.float32)
    apply_evit(model, keep_rate=0.7, layers=(3, 6, 9))
    with torch.no_grad():
        out = model(img)
        assert model.token_counts == [197] * 4 + [140] * 3 + [100] * 3 + [72] * 3
        remove_evit(model)
        torch.testing.assert_close(model(img), base(img), rtol=0, atol=0)
        assert not torch.allclose(out, base(img))
    assert all(type(b) is type(base.blocks[0]) for b in model.blocks)
    assert not any(k.startswith("_evit") for b in model.blocks for k in vars(b))


def test_evit_rejects_layouts_without_one_class_token():
    for layout in (dict(class_token=False, global_pool="avg"), dict(reg_tokens=2)):
        with pytest.raises(ValueError, match="class token"):
            apply_evit(_timm_vit(**layout), 0.7, (1,))
    with pytest.raises(ValueError, match="out of range"):
        apply_evit(_timm_vit(), 0.7, (4,))
    with pytest.raises(ValueError, match="keep_rate"):
        apply_evit(_timm_vit(), 0.0, (1,))


# ---- GTP-ViT -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("graph_type", ["spatial", "mixed"])
def test_gtp_equals_restated_official_math(graph_type):
    model = _timm_vit(init_values=0.3)
    img = _img()
    with torch.no_grad():
        expected, counts = gtp_restated(model, img, 5, graph_type, 3, 0.1)
        apply_gtp(model, num_prop=5, graph_type=graph_type, num_neighbours=3, alpha=0.1, token_scale=True)
        fused = model(img)
        assert model._gtp_info["token_counts"] == counts == [65, 60, 55, 50, 45]
        with imtok.use_reference():
            ref = model(img)
    torch.testing.assert_close(fused, expected)
    torch.testing.assert_close(ref, expected)


def test_gtp_remove_restores_and_rejects():
    base = _timm_vit()
    model = apply_gtp(copy.deepcopy(base), num_prop=[3, 0, 2, 1], graph_type="semantic", num_neighbours=4)
    img = _img()
    with torch.no_grad():
        model(img)
        assert model._gtp_info["token_counts"] == [65, 62, 62, 60, 59]
        remove_gtp(model)
        torch.testing.assert_close(model(img), base(img), rtol=0, atol=0)
    assert not hasattr(model, "_gtp_info") and all(type(b) is type(base.blocks[0]) for b in model.blocks)
    with pytest.raises(ValueError, match="one value per block"):
        apply_gtp(_timm_vit(), num_prop=[1, 2])
    with pytest.raises(ValueError, match="num_prop must be >= 0"):
        apply_gtp(_timm_vit(), num_prop=-3)
    with pytest.raises(TypeError, match="num_prop must be an integer"):
        apply_gtp(_timm_vit(), num_prop=2.0)
    with pytest.raises(ValueError, match="class token"):
        apply_gtp(_timm_vit(reg_tokens=1))
    with pytest.raises(ValueError, match="remove that patch first"):
        apply_evit(apply_gtp(_timm_vit(), 2), 0.5, (1,))


# ---- the shared attention entry ------------------------------------------------------------------------------
def test_self_attention_side_outputs_on_timm_and_hf_names():
    torch.manual_seed(3)
    layer = Attention(24, 4).double()
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    bias = torch.rand(2, 7, dtype=torch.float64).log()
    qkv = layer.qkv(x).reshape(2, 7, 3, 4, 6).permute(2, 0, 3, 1, 4)
    p = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / 6 ** 0.5 + bias[:, None, None], -1)
    expected = layer.proj((p @ qkv[2]).transpose(1, 2).reshape(2, 7, 24))
    names = ("q", "k", "lse", "cls_attn", "cls_attn_heads", "col_sum", "col_sum_heads")
    for reference in (False, True):
        with imtok.use_reference(reference):
            out, side = self_attention(layer, x, key_bias=bias, need=names)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(side["q"], qkv[0])
        torch.testing.assert_close(side["k"], qkv[1])
        torch.testing.assert_close(side["cls_attn_heads"], p[:, :, 0])
        torch.testing.assert_close(side["cls_attn"], p[:, :, 0].mean(1))
        torch.testing.assert_close(side["col_sum_heads"], p.sum(2))
        torch.testing.assert_close(side["col_sum"], p.sum(2).mean(1))
        torch.testing.assert_close(side["lse"], (qkv[0] @ qkv[1].transpose(-1, -2) / 6 ** 0.5
                                                 + bias[:, None, None]).logsumexp(-1))

    class HFNames(torch.nn.Module):  # transformers' CLIPAttention layout
        def __init__(self):
            super().__init__()
            self.num_heads, self.head_dim, self.scale, self.dropout = 4, 6, 6 ** -0.5, 0.0
            w = layer.qkv.weight.chunk(3)
            b = layer.qkv.bias.chunk(3)
            self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(24, 24).double() for _ in range(3))
            for lin, wi, bi in zip((self.q_proj, self.k_proj, self.v_proj), w, b):
                lin.weight.data, lin.bias.data = wi.clone(), bi.clone()
            self.out_proj = layer.proj

    torch.testing.assert_close(self_attention(HFNames(), x, key_bias=bias), expected)
    with pytest.raises(ValueError, match="unknown side outputs"):
        self_attention(layer, x, need=("attn_map",))
    timm_attn = _timm_vit().blocks[0].attn.train()
    timm_attn.attn_drop.p = 0.1
    with pytest.raises(NotImplementedError, match="dropout"):
        self_attention(timm_attn, torch.randn(1, 5, 32, dtype=torch.float64))
