"""Generators: MaskGIT (TiTok), LlamaGen GPT (KV cache, CFG), Token-Shuffle AR, grouped speculative decoding.

Official-code fixtures (tests/fixtures/, made by the make_*.py scripts there) pin the loaders and the
sampling schedules; the rest restates the anchors' conventions independently (losses, masks, RoPE, orders).
"""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import imtok
import imtok.generators as G
from imtok.generators.maskgit import mask_len_at
from imtok.generators.token_shuffle_ar import decoding_to_raster_order, raster_to_decoding_order

safetensors = pytest.importorskip("safetensors.torch")

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _randomize(model, scale=0.3, seed=0):
    """Random weights everywhere (the anchors zero the output layer at init), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_gpt(**kw):
    cfg = dict(dim=32, n_layer=2, n_head=2, multiple_of=16, vocab_size=48, block_size=16, num_classes=5)
    cfg.update(kw)
    return _randomize(G.create("llamagen-gpt-tiny", **cfg))


def tiny_shuffle_gpt(shuffle=2, **kw):
    cfg = dict(dim=32, n_layer=2, n_head=2, multiple_of=16, vocab_size=48, block_size=64, num_classes=5,
               shuffle=shuffle)
    cfg.update(kw)
    return _randomize(G.create("token-shuffle-gpt-tiny", **cfg))


def tiny_maskgit(model_type="UViT", **kw):
    cfg = dict(codebook_size=40, image_seq_len=16, condition_num_classes=5, model_type=model_type, hidden_size=32,
               num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    cfg.update(kw)
    return _randomize(G.create("maskgit-tiny", **cfg), scale=0.1)


def load_fixture(*parts):
    d = os.path.join(FIXTURES, *parts)
    with open(os.path.join(d, "config.json")) as f:
        meta = json.load(f)
    return meta, safetensors.load_file(os.path.join(d, "model.safetensors")), \
        safetensors.load_file(os.path.join(d, "io.safetensors"))


# ---- registry, save / load ----------------------------------------------------------------------------------
def test_registry_names_and_overrides():
    names = G.available()
    for n in ("maskgit-tiny", "maskgit-titok-s128", "maskgit-titok-l32", "llamagen-gpt-b", "llamagen-gpt-l",
              "llamagen-gpt-xl", "llamagen-gpt-tiny", "token-shuffle-gpt-tiny"):
        assert n in names
    m = G.create("LLAMAGEN-GPT-tiny", vocab_size=32)
    assert m.output.out_features == 32 and isinstance(m, G.LlamaGenGPT)
    with pytest.raises(ValueError, match="unknown generator"):
        G.create("no-such-model")


def test_published_gpt_b_layout():
    # GPT-B: 12 layers, 12 heads, width 768, SwiGLU hidden find_multiple(int(2 * 3072 / 3), 256) = 2048, ~111M
    m = G.create("llamagen-gpt-b")
    assert (m.n_layer, m.n_head, m.dim) == (12, 12, 768)
    assert m.layers[0].feed_forward.w1.out_features == 2048
    n = sum(p.numel() for p in m.parameters())
    assert 105e6 < n < 115e6


@pytest.mark.parametrize("build", [tiny_gpt, tiny_shuffle_gpt, tiny_maskgit])
def test_save_and_from_pretrained(tmp_path, build):
    m = build()
    m.save_pretrained(str(tmp_path))
    m2 = G.from_pretrained(str(tmp_path)).eval()
    assert type(m2) is type(m) and m2.config == m.config
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    with pytest.raises(TypeError, match="holds a"):
        (G.MaskGITGenerator if not isinstance(m, G.MaskGITGenerator) else G.LlamaGenGPT).from_pretrained(
            str(tmp_path))


def test_from_pretrained_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        G.from_pretrained(str(tmp_path))


# ---- official fixtures ----------------------------------------------------------------------------------------
def test_llamagen_official_fixture():
    meta, sd, io = load_fixture("llamagen-gpt")
    m = G.load_official("llamagen-gpt", sd, meta["model_args"])
    logits, _ = m(io["tokens"][:, :-1], io["cond"])
    torch.testing.assert_close(logits, io["logits"], atol=2e-5, rtol=1e-5)
    m.train()
    torch.manual_seed(7)  # the anchor's class dropout draws torch.rand(B) once
    _, loss = m(io["tokens"][:, :-1], io["cond"], targets=io["tokens"])
    torch.testing.assert_close(loss.reshape(1), io["train_loss_seed7"], atol=1e-5, rtol=1e-5)
    m.eval()
    assert torch.equal(m.generate(io["cond"], cfg_scale=2.0, temperature=0), io["greedy_cfg2"])
    assert torch.equal(m.generate(io["cond"], cfg_scale=3.0, cfg_interval=3, temperature=0),
                       io["greedy_cfg3_interval3"])
    assert torch.equal(m.generate(io["cond"], temperature=0), io["greedy_nocfg"])
    with imtok.use_reference():
        assert torch.equal(m.generate(io["cond"], cfg_scale=2.0, temperature=0), io["greedy_cfg2"])


def test_llamagen_official_loader_errors():
    meta, sd, _ = load_fixture("llamagen-gpt")
    with pytest.raises(ValueError, match="does not match"):
        G.load_official("llamagen-gpt", sd, {**meta["model_args"], "n_layer": 3})
    with pytest.raises(NotImplementedError, match="c2i"):
        G.load_official("llamagen-gpt", sd, {**meta["model_args"], "model_type": "t2i"})
    with pytest.raises(ValueError, match="unknown family"):
        G.load_official("llamagen", sd, meta["model_args"])
    wrapped = G.load_official("llamagen-gpt", {"model": sd}, meta["model_args"])  # training checkpoints nest
    assert torch.equal(wrapped.output.weight, sd["output.weight"])


@pytest.mark.parametrize("layout", ["vit", "uvit"])
def test_titok_maskgit_official_fixture(layout):
    meta, sd, io = load_fixture("titok-maskgit", layout)
    m = G.load_official("titok-maskgit", sd, meta["config"])
    assert m.image_seq_len == 8  # resolved from ${model.vq_model.num_latent_tokens}
    with torch.no_grad():
        torch.testing.assert_close(m(io["input_ids"], io["condition"], cond_drop_prob=0.0), io["logits_cond"],
                                   atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(m(io["input_ids"], io["condition"], cond_drop_prob=1.0), io["logits_uncond"],
                                   atol=2e-5, rtol=1e-5)
    torch.manual_seed(5)
    masked, masks = m.masking_input_tokens(io["mask_source_tokens"])
    assert torch.equal(masked, io["masked_tokens_seed5"]) and torch.equal(masks, io["masks_seed5"])
    for name, kw in meta["generate_kwargs"].items():
        out = m.generate(io["condition"], randomize_temperature=0.0, num_sample_steps=4, **kw)
        assert torch.equal(out, io[f"generate_{name}"]), name


def test_titok_loader_errors():
    meta, sd, _ = load_fixture("titok-maskgit", "vit")
    bad = {k: v for k, v in sd.items() if "layer.1." not in k}
    with pytest.raises(ValueError, match="lacks"):
        G.load_official("titok-maskgit", bad, meta["config"])
    with pytest.raises(TypeError, match="plain dict"):
        G.load_official("titok-maskgit", sd, "config.yaml")


# ---- MaskGIT schedule and training conventions ----------------------------------------------------------------
def test_golden_remaining_mask_counts():
    assert G.remaining_masked(32, 8) == [29, 26, 24, 21, 18, 14, 10, 0]
    assert G.remaining_masked(256, 16) == [245, 235, 225, 214, 204, 193, 182, 170, 158, 145, 132, 117, 101, 82, 57, 0]


@pytest.mark.parametrize("decay", ["constant", "linear", "power-cosine"])
def test_generate_follows_golden_counts(monkeypatch, decay):
    m = tiny_maskgit(image_seq_len=32)
    seen = []
    logits = m.logits

    def spy(ids, cls):
        seen.append((ids == m.mask_token_id).sum(-1))
        return logits(ids, cls)

    monkeypatch.setattr(m, "logits", spy)
    out = m.generate(torch.tensor([0, 3]), guidance_scale=2.0, guidance_decay=decay, randomize_temperature=2.0,
                     num_sample_steps=8, generator=torch.Generator().manual_seed(1))
    assert [int(s[0]) for s in seen] == [32, 29, 26, 24, 21, 18, 14, 10]
    assert all(bool((s == s[0]).all()) for s in seen)
    assert out.shape == (2, 32) and int(out.max()) < m.codebook_size
    assert mask_len_at(0, 8, 32) == 29


def test_maskgit_loss_restated():
    m = tiny_maskgit()
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 16, 40, generator=g)
    targets = torch.randint(0, 40, (2, 16), generator=g)
    masks = torch.rand(2, 16, generator=g) < 0.5
    logp = logits.log_softmax(-1)
    per_token = 0.9 * -logp.gather(-1, targets[..., None])[..., 0] + 0.1 * -logp.mean(-1)  # label smoothing 0.1
    w = torch.where(masks, 1.0, 0.1)
    expected = (per_token * w).sum() / w.sum()
    torch.testing.assert_close(m.mlm_loss(logits, targets, masks), expected)


def test_maskgit_training_masks_follow_acos_schedule():
    m = tiny_maskgit(image_seq_len=64)
    tokens = torch.randint(0, 40, (6, 64))
    masked, masks = m.masking_input_tokens(tokens, generator=torch.Generator().manual_seed(9))
    t = torch.rand(6, generator=torch.Generator().manual_seed(9))  # the first draw: per-sample timesteps
    expected = [max(1, round(64 * min(max(math.acos(float(x)) / (math.pi / 2), 1e-6), 1.0))) for x in t]
    assert masks.sum(1).tolist() == expected
    assert torch.equal(masked[masks], torch.full((int(masks.sum()),), m.mask_token_id))
    assert torch.equal(masked[~masks], tokens[~masks])
    loss, info = m.training_loss(tokens, torch.randint(0, 5, (6,)))
    assert loss.requires_grad and 0.0 <= float(info["correct_tokens"]) <= 1.0


def test_maskgit_class_token_space():
    m = tiny_maskgit()  # codes [0, 40), mask 40, classes 41..45, null 46
    assert m.mask_token_id == 40 and m.null_class_id == 46
    assert m.class_tokens(torch.tensor([0, 4])).tolist() == [41, 45]
    assert m.class_tokens(torch.tensor([0, 4]), torch.tensor([True, False])).tolist() == [46, 45]
    assert m.embeddings.num_embeddings == 47


# ---- AR model conventions ---------------------------------------------------------------------------------------
def test_rope_rows_and_zero_condition_rotation():
    m = tiny_gpt()
    table = m.freqs_cis  # [1 + 16, head_dim / 2, 2]
    assert torch.equal(table[0], torch.zeros_like(table[0]))  # the class position: q, k become zero
    # token j sits at (row, col) = divmod(j, 4): first half of the pairs rotates with the row, second with the col
    j, (row, col) = 6, divmod(6, 4)
    half = table.shape[1] // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, 2 * half, 2)[:half].float() / (2 * half)))
    torch.testing.assert_close(table[1 + j, :half, 0], torch.cos(row * freqs))
    torch.testing.assert_close(table[1 + j, half:, 1], torch.sin(col * freqs))


def test_ar_training_loss_restated():
    m = tiny_gpt()
    tokens = torch.randint(0, 48, (3, 16))
    cond = torch.tensor([0, 2, 4])
    loss, _ = m.training_loss(tokens, cond)
    logits, _ = m(tokens[:, :-1], cond)
    assert logits.shape == (3, 16, 48)
    expected = -logits.log_softmax(-1).gather(-1, tokens[..., None]).mean()
    torch.testing.assert_close(loss, expected)
    # logits[:, j] sees tokens < j only: changing token 5 leaves logits 0..5 alone
    other = tokens.clone()
    other[:, 5] = (other[:, 5] + 1) % 48
    logits2, _ = m(other[:, :-1], cond)
    torch.testing.assert_close(logits2[:, :6], logits[:, :6])
    assert not torch.allclose(logits2[:, 6:], logits[:, 6:])


@pytest.mark.parametrize("build", [tiny_gpt, tiny_shuffle_gpt])
def test_kv_cache_decoding_equals_recompute(build):
    m = build()
    step = m.tokens_per_step
    B, n = 2, m.block_size
    tokens = torch.randint(0, 48, (B, n))  # decoding order
    cond = torch.tensor([1, 3])
    full, _ = m(tokens[:, :-step], cond)  # [B, n, V] teacher-forced, no cache
    caches = m.setup_caches(B, 1 + n // step)
    with torch.no_grad():
        parts = [m.decode_step(m.cls_embedding(cond, train=False), 0, caches)]
        pos = 1
        for chunk in (1, 3, 2):  # one position, then several at once (as speculative decoding does)
            x = tokens[:, (pos - 1) * step:(pos - 1 + chunk) * step]
            parts.append(m.decode_step(m.embed_tokens(x), pos, caches))
            pos += chunk
        while pos < n // step:
            parts.append(m.decode_step(m.embed_tokens(tokens[:, (pos - 1) * step:pos * step]), pos, caches))
            pos += 1
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError, match="KV cache holds"):
        m.decode_step(m.embed_tokens(tokens[:, :step]), 0, caches)


@pytest.mark.parametrize("build,kw", [
    (tiny_gpt, dict(cfg_scale=2.5)), (tiny_gpt, dict(cfg_scale=2.0, cfg_interval=4)), (tiny_gpt, {}),
    (tiny_shuffle_gpt, dict(cfg_scale=2.0)),
])
def test_ar_greedy_fused_equals_reference(build, kw):
    m = build()
    cond = torch.tensor([0, 1, 4])
    out = m.generate(cond, temperature=0, **kw)
    with imtok.use_reference():
        ref = m.generate(cond, temperature=0, **kw)
    assert torch.equal(out, ref)
    assert out.shape == (3, m.block_size)


def test_ar_greedy_is_argmax_of_guided_logits():
    m = tiny_gpt()
    cond = torch.tensor([2, 3])
    out = m.generate(cond, cfg_scale=3.0, cfg_interval=2, temperature=0, max_new_tokens=8)
    for t in range(8):  # recompute every step without the cache
        lc, _ = m(out[:, :t], cond)
        lu, _ = m(out[:, :t], torch.full_like(cond, m.num_classes))
        g = lu[:, -1] + 3.0 * (lc[:, -1] - lu[:, -1]) if t <= 3 else lc[:, -1]  # CFG through token interval + 1
        assert torch.equal(out[:, t], g.argmax(-1)), t


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(cfg_scale=2.0, top_k=5, top_p=0.8)])
def test_maskgit_and_sampling_kw_fused_equals_reference(kw):
    m = tiny_maskgit(model_type="ViT")
    cond = torch.tensor([1, 2])
    out = m.generate(cond, guidance_scale=2.0, randomize_temperature=0.0, num_sample_steps=6)
    with imtok.use_reference():
        ref = m.generate(cond, guidance_scale=2.0, randomize_temperature=0.0, num_sample_steps=6)
    assert torch.equal(out, ref)
    gpt = tiny_gpt()
    samples = gpt.generate(cond, generator=torch.Generator().manual_seed(0), **kw)
    assert samples.shape == (2, 16) and int(samples.max()) < 48


# ---- Token-Shuffle ------------------------------------------------------------------------------------------
def test_token_shuffle_s1_is_the_plain_model():
    ts = tiny_shuffle_gpt(shuffle=1, block_size=16)
    plain = G.LlamaGenGPT(**{k: v for k, v in ts.config.items() if k != "shuffle"})
    plain.load_state_dict(ts.state_dict())
    plain.eval()
    cond = torch.tensor([0, 4])
    assert torch.equal(ts.generate(cond, cfg_scale=2.0, temperature=0), plain.generate(cond, cfg_scale=2.0,
                                                                                       temperature=0))
    tokens = torch.randint(0, 48, (2, 16))
    torch.testing.assert_close(ts.training_loss(tokens, cond)[0], plain.training_loss(tokens, cond)[0])


def test_token_shuffle_orders_and_training_path():
    h, w, s = 3, 2, 2
    raster = torch.arange(h * s * w * s).view(1, -1)
    dec = raster_to_decoding_order(raster, h, w, s)
    assert dec[0, :4].tolist() == [0, 1, 4, 5]  # block (0, 0) of a 6 x 4 grid, row-major inside the block
    assert torch.equal(decoding_to_raster_order(dec, h, w, s), raster)
    m = tiny_shuffle_gpt()
    tokens = torch.randint(0, 48, (2, 64))
    cond = torch.tensor([1, 2])
    loss, _ = m.training_loss(tokens, cond)  # whole-grid fused shuffles, raster order
    dec = raster_to_decoding_order(tokens, 4, 4, 2)
    logits, _ = m(dec[:, :-4], cond)  # decoding order, one block per position
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 48), dec.reshape(-1)), atol=1e-5,
                               rtol=1e-5)
    with imtok.use_reference():
        torch.testing.assert_close(m.training_loss(tokens, cond)[0], loss, atol=1e-5, rtol=1e-5)


def test_token_shuffle_generates_s2_tokens_per_step(monkeypatch):
    m = tiny_shuffle_gpt()
    calls = []
    step = m.decode_step
    monkeypatch.setattr(m, "decode_step", lambda h, start, caches: calls.append(h.shape[1]) or step(h, start, caches))
    out = m.generate(torch.tensor([3]), cfg_scale=2.0, temperature=0)
    assert out.shape == (1, 64) and len(calls) == 64 // 4  # 16 positions of 4 tokens each
    # the raster output, put back in decoding order, is what the model predicts greedily position by position
    dec = raster_to_decoding_order(out, 4, 4, 2)
    lc, _ = m(dec[:, :-4], torch.tensor([3]))
    lu, _ = m(dec[:, :-4], torch.tensor([m.num_classes]))
    assert torch.equal((lu + 2.0 * (lc - lu)).argmax(-1), dec)


# ---- speculative decoding -------------------------------------------------------------------------------------
def test_gsd_greedy_equals_plain_greedy():
    m = tiny_gpt()
    cond = torch.tensor([0, 1, 2, 3])
    plain = m.generate(cond, cfg_scale=2.0, temperature=0)
    for mode, window in (("gsd", 7), ("sjd", 0)):
        out, passes = m.generate(cond, cfg_scale=2.0, temperature=0, speculative=mode, draft_len=5,
                                 gsd_window=window)
        assert torch.equal(out, plain), mode
        assert 1 <= passes <= 16


def test_gsd_window0_is_sjd():
    m = tiny_gpt()
    cond = torch.tensor([0, 1, 2])
    a = m.generate(cond, speculative="gsd", gsd_window=0, generator=torch.Generator().manual_seed(4))
    b = m.generate(cond, speculative="sjd", gsd_window=7, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


def _chi2_critical(df, z=3.09):  # Wilson-Hilferty quantile, z = 3.09: alpha = 0.001
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _two_sample_chi2(a, b, bins):
    ca, cb = torch.bincount(a, minlength=bins).double(), torch.bincount(b, minlength=bins).double()
    keep = (ca + cb) > 0
    ca, cb = ca[keep], cb[keep]
    na, nb = ca.sum(), cb.sum()
    stat = (((ca * (nb / na).sqrt() - cb * (na / nb).sqrt()) ** 2) / (ca + cb)).sum()
    return float(stat), int(keep.sum()) - 1


def test_sjd_and_gsd_output_distribution_match_plain_ar():
    V = 6
    m = tiny_gpt(vocab_size=V, block_size=4, num_classes=2)
    with torch.no_grad():  # sharper, context-dependent distributions
        m.output.weight.mul_(4.0)
    cond = torch.zeros(3000, dtype=torch.long)
    plain = m.generate(cond, cfg_scale=1.5, generator=torch.Generator().manual_seed(0))
    joint = lambda x: x[:, 0] * V * V + x[:, 1] * V + x[:, 2]  # noqa: E731  first three tokens
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0], [0.0, -1.0]])
    for window in (0, 7):
        spec, passes = m.generate(cond, cfg_scale=1.5, speculative="gsd", gsd_window=window, draft_len=3,
                                  code_embedding=emb, generator=torch.Generator().manual_seed(1))
        assert passes < 4 + 1
        stat, df = _two_sample_chi2(joint(plain), joint(spec), V ** 3)
        assert stat < _chi2_critical(df), (window, stat, df)
        for t in range(4):
            stat, df = _two_sample_chi2(plain[:, t], spec[:, t], V)
            assert stat < _chi2_critical(df), (window, t, stat, df)


# ---- bad input ------------------------------------------------------------------------------------------------
def test_bad_inputs():
    m = tiny_gpt()
    with pytest.raises(ValueError, match="cond_idx values"):
        m.generate(torch.tensor([99]))
    with pytest.raises(TypeError, match="integer"):
        m.generate(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(torch.tensor([1]), max_new_tokens=17)
    with pytest.raises(ValueError, match="speculative"):
        m.generate(torch.tensor([1]), speculative="medusa")
    with pytest.raises(ValueError, match="top_p"):
        m.generate(torch.tensor([1]), top_p=0.0)
    with pytest.raises(ValueError, match="tokens must be"):
        m.training_loss(torch.randint(0, 48, (2, 15)), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="square"):
        G.create("llamagen-gpt-tiny", block_size=15)
    assert G.create("llamagen-gpt-tiny", block_size=15, rope="1d").freqs_cis.shape[0] == 16
    with pytest.raises(ValueError, match="null class"):
        G.create("llamagen-gpt-tiny", class_dropout_prob=0.0).generate(torch.tensor([1]), cfg_scale=2.0)
    with pytest.raises(NotImplementedError, match="one token per step"):
        tiny_shuffle_gpt().generate(torch.tensor([1]), speculative="gsd")
    with pytest.raises(ValueError, match="shuffle"):
        G.create("token-shuffle-gpt-tiny", block_size=48)
    mg = tiny_maskgit()
    with pytest.raises(ValueError, match="Unsupported guidance decay"):
        mg.generate(torch.tensor([1]), guidance_decay="cosine")
    with pytest.raises(ValueError, match="condition values"):
        mg.generate(torch.tensor([5]))
    with pytest.raises(ValueError, match="image_seq_len"):
        mg(torch.randint(0, 40, (1, 15)), torch.tensor([1]))
    with pytest.raises(ValueError, match="tokens values"):
        mg.training_loss(torch.full((1, 16), 40), torch.tensor([1]))
