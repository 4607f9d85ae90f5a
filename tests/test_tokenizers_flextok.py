"""FlexTok (imtok.tokenizers.flextok): the causal_last mask against a dense boolean mask, FSQ tokens, nested
dropout modes, both decoders (fused == reference, gradients, per-sample lengths == separate calls), the
rectified-flow conventions and sampler (determinism, CFG, APG restated), save/load, input checks, the trainer
hook. Tiny configs only."""
import pytest
import torch
import torch.nn.functional as F

import imtok
import imtok.tokenizers as T
from _tokenizer_checks import assert_save_load_round_trip
from imtok.layers import attention
from imtok.tokenizers.flextok import FlexTokConfig, normalized_guidance, sample_keep_k

TINY = dict(image_size=16, patch_size=4, num_registers=8, enc_width=32, enc_depth=2, dec_width=32, dec_depth=2,
            head_dim=16)


def tiny(decoder="pixel", **kw):
    torch.manual_seed(0)
    return T.FlexTok(FlexTokConfig(**{**TINY, "decoder": decoder, **kw}))


def images(b=3, size=16):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(b))


def randomize_(tok, std=0.05):
    """AdaLN-zero starts every gate / output layer at 0 (so no gradient flows past them): give every parameter
    a random value for tests that need a generic point."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in tok.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return tok


def prefix_lm_mask(P, L):
    i = torch.arange(L)
    return ((i[:, None] < P) & (i[None, :] < P)) | ((i[:, None] >= P) & (i[None, :] <= i[:, None]))


# ---- registry -----------------------------------------------------------------------------------------------
def test_registry_names_and_published_sizes():
    names = T.available()
    for n in ("flextok-tiny", "flextok-tiny-flow", "flextok-d12-d12", "flextok-d18-d18", "flextok-d18-d28"):
        assert n in names and names[n]
    fam, fields, _ = T.REGISTRY["flextok-d18-d28"]
    c = T.FAMILIES[fam].config_class(**fields)
    assert (c.enc_width, c.enc_depth, c.dec_width, c.dec_depth, c.head_dim) == (1152, 18, 1792, 28, 64)
    assert (c.num_registers, c.levels, c.decoder, c.image_size // c.patch_size) == (256, (8, 8, 8, 5, 5, 5), "flow", 16)
    tok = T.create("flextok-tiny")
    assert tok.codebook_size == 64000 and tok.num_latent_tokens == 32


# ---- the causal_last mask -------------------------------------------------------------------------------------
@pytest.mark.parametrize("reference", [False, True])
def test_causal_prefix_equals_dense_boolean_mask(reference):
    torch.manual_seed(0)
    B, H, P, R, d = 2, 3, 12, 5, 8
    q, k, v = (torch.randn(B, H, P + R, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=prefix_lm_mask(P, P + R))
    with imtok.use_reference(reference):
        got = attention(q, k, v, causal=True, causal_prefix=P)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), g), torch.autograd.grad(want, (q, k, v), g)):
        torch.testing.assert_close(a, b)
    keep = torch.rand(B, P + R, generator=torch.Generator().manual_seed(1)) > 0.3
    keep[:, 0] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=prefix_lm_mask(P, P + R) & keep[:, None, None, :])
    with imtok.use_reference(reference):
        torch.testing.assert_close(attention(q, k, v, causal=True, causal_prefix=P, key_mask=keep), want)
    with pytest.raises(ValueError, match="causal_prefix needs causal=True"):
        attention(q, k, v, causal_prefix=P)


def test_encoder_registers_see_patches_and_earlier_registers_only():
    enc = randomize_(tiny()).encoder.eval()
    x = images(1) * 2 - 1
    with torch.no_grad():
        base = enc(x)
        enc.registers[3].copy_(torch.randn(32))  # changes register 3 and, through attention, registers > 3
        moved = enc(x)
    changed = (moved - base).abs().amax(-1)[0] > 1e-4
    assert changed.tolist() == [False] * 3 + [True] * 5
    with torch.no_grad():
        other = enc(x.flip(-1))
    assert ((other - base).abs().amax(-1)[0] > 1e-4).all()  # every register reads the patches


# ---- FSQ and nested dropout ------------------------------------------------------------------------------------
def test_tokens_are_fsq_indices_of_the_codes():
    tok = tiny().eval()
    with torch.no_grad():
        z_q, info = tok.encode(images())
    idx = info["min_encoding_indices"]
    assert z_q.shape == (3, 6, 1, 8) and idx.shape == (3, 1, 8) and idx.dtype == torch.int64
    assert int(idx.min()) >= 0 and int(idx.max()) < 64000
    # independent restatement: code c in dim j is (m_j - L_j // 2) / (L_j // 2); index = sum m_j prod_{i<j} L_i
    levels = torch.tensor([8, 8, 8, 5, 5, 5])
    half = levels // 2
    m = (z_q[:, :, 0].transpose(1, 2) * half + half).round().long()
    basis = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels[:-1]]), 0)
    assert torch.equal((m * basis).sum(-1), idx[:, 0])


def test_nested_dropout_modes():
    g = torch.Generator().manual_seed(0)
    u = sample_keep_k("uniform", 4000, 16, g)
    assert set(u.tolist()) == set(range(1, 17))
    p = sample_keep_k("pow2", 4000, 16, g)
    assert set(p.tolist()) == {1, 2, 4, 8, 16}
    assert abs((p == 16).float().mean().item() - 0.2) < 0.03  # uniform over the powers of two
    up = sample_keep_k("uniform_pow2", 4000, 16, g)
    assert set(up.tolist()) == {1, 2, 4, 8, 16}
    assert abs((up == 16).float().mean().item() - 8 / 16) < 0.04  # k in 9..16 rounds up to 16
    assert abs((up == 1).float().mean().item() - 1 / 16) < 0.02
    assert sample_keep_k("uniform_pow2", 1000, 12, g).max() == 12  # capped at N when N is no power of two
    with pytest.raises(ValueError, match="nested_dropout"):
        FlexTokConfig(nested_dropout="pow2", num_registers=12)


def test_training_masks_registers_past_keep_k():
    tok = randomize_(tiny(nested_dropout="uniform")).train()
    x = images(4)
    codes_grad = []

    def keep_grad(module, args, out):
        out[0].register_hook(codes_grad.append)
    tok.quantize.register_forward_hook(keep_grad)
    recon, info = tok(x)
    F.mse_loss(recon, x).backward()
    keep = info["keep_k"]
    assert keep.shape == (4,) and int(keep.min()) >= 1 and int(keep.max()) <= 8
    visible = codes_grad[0].abs().sum(-1) > 0  # gradient reaches exactly the kept codes
    assert torch.equal(visible, torch.arange(8)[None] < keep[:, None])


# ---- fused == reference, gradients ------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["pixel", "flow"])
@pytest.mark.parametrize("training", [False, True])
def test_fused_equals_reference(decoder, training):
    tok = randomize_(tiny(decoder)).train(training)
    x = images(3)
    kw = {} if training else {"lengths": torch.tensor([2, 8, 5])}
    if decoder == "flow" and not training:
        kw.update(steps=3, guidance_scale=2.0, norm_guidance=True)
    torch.manual_seed(1)
    out_f, info_f = tok(x, **kw)
    with imtok.use_reference():
        torch.manual_seed(1)
        out_r, info_r = tok(x, **kw)
    assert torch.equal(info_f["min_encoding_indices"], info_r["min_encoding_indices"])
    torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-5)
    if training and decoder == "flow":
        torch.testing.assert_close(info_f["rec_loss"], info_r["rec_loss"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("decoder", ["pixel", "flow"])
def test_gradients_reach_every_trainable_parameter(decoder):
    tok = randomize_(tiny(decoder, cond_dropout=0.0)).train()
    x = images(4)
    # flow: one pass with the registers, one with the null condition (cond_dropout 1) reaches null_cond
    for cond_dropout in ((0.0, 1.0) if decoder == "flow" else (0.0,)):
        tok.config.cond_dropout = cond_dropout
        recon, info = tok(x, lengths=torch.tensor([8, 3, 8, 1]))
        (info["rec_loss"] if decoder == "flow" else F.mse_loss(recon, x)).backward()
    missing = [n for n, p in tok.named_parameters() if p.requires_grad and not (p.grad is not None and p.grad.abs().sum() > 0)]
    assert not missing, missing


# ---- per-sample lengths ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["pixel", "flow"])
def test_per_sample_lengths_equal_separate_calls(decoder):
    tok = randomize_(tiny(decoder)).eval()
    tokens = torch.randint(0, 64000, (4, 8), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([1, 8, 3, 5])
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    kw = dict(steps=2, guidance_scale=3.0, norm_guidance=True) if decoder == "flow" else {}
    with torch.no_grad():
        batched = tok.decode_tokens(tokens, lengths=lengths, **({"noise": noise} if decoder == "flow" else {}), **kw)
        for b in range(4):
            one = tok.decode_tokens(tokens[b:b + 1], lengths=int(lengths[b]),
                                    **({"noise": noise[b:b + 1]} if decoder == "flow" else {}), **kw)
            torch.testing.assert_close(batched[b:b + 1], one, rtol=1e-5, atol=1e-5)
            # tokens past the length do not matter; a prefix of n tokens is the same as lengths = n
            prefix = tok.decode_tokens(tokens[b:b + 1, :int(lengths[b])],
                                       **({"noise": noise[b:b + 1]} if decoder == "flow" else {}), **kw)
            torch.testing.assert_close(prefix, one, rtol=1e-5, atol=1e-5)


# ---- the rectified flow ------------------------------------------------------------------------------------------
def test_flow_training_convention():
    """t = sigmoid(N(0, 1)); x_t = t noise + (1 - t) x (t = 1 is noise); target noise - x; estimate x_t - t v."""
    tok = randomize_(tiny("flow", cond_dropout=0.0, nested_dropout=None)).train()
    x = images(2)
    torch.manual_seed(5)
    recon, info = tok(x)
    torch.manual_seed(5)
    t = torch.sigmoid(torch.randn(2))
    noise = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(info["t"], t)
    clean = x * 2 - 1
    tb = t[:, None, None, None]
    x_t = tb * noise + (1 - tb) * clean
    with torch.no_grad():
        z_q, _ = tok.encode(x)
        v = tok.decoder(x_t, t, tok.decoder.registers(z_q[:, :, 0].transpose(1, 2)))
    torch.testing.assert_close(info["rec_loss"], ((v - (noise - clean)) ** 2).mean())
    torch.testing.assert_close(recon, (x_t - tb * v) * 0.5 + 0.5)


def test_sampler_is_deterministic_given_a_generator_and_follows_euler():
    tok = randomize_(tiny("flow")).eval()
    tokens = torch.randint(0, 64000, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = tok.decode_tokens(tokens, steps=3, generator=torch.Generator().manual_seed(4))
        b = tok.decode_tokens(tokens, steps=3, generator=torch.Generator().manual_seed(4))
        c = tok.decode_tokens(tokens, steps=3, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b) and not torch.allclose(a, c)
        # Euler from t = 1 to 0 with the anchor's step, restated
        noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
        regs = tok.decoder.registers(tok.quantize.lookup(tokens))
        x = noise
        for t in (1.0, 2 / 3, 1 / 3):
            x = x - tok.decoder(x, torch.full((2,), t), regs) / 3
        torch.testing.assert_close(a, x * 0.5 + 0.5)
        # CFG: uncond + g (cond - uncond), with the learned null condition as uncond
        g = 2.5
        x = noise
        null = tok.decoder.null_registers(2)
        for t in (1.0, 2 / 3, 1 / 3):
            tt = torch.full((2,), t)
            vc, vu = tok.decoder(x, tt, regs), tok.decoder(x, tt, null)
            x = x - (vu + g * (vc - vu)) / 3
        cfg = tok.decode_tokens(tokens, steps=3, guidance_scale=g, noise=noise)
        torch.testing.assert_close(cfg, x * 0.5 + 0.5, rtol=1e-5, atol=1e-5)


def test_apg_restated():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    running = torch.randn(2, 3, 4, 4, generator=g)
    out, new_running = normalized_guidance(cond, uncond, 4.0, running, norm_threshold=2.5)
    for b in range(2):
        diff = (cond[b] - uncond[b]) - 0.5 * running[b]
        torch.testing.assert_close(new_running[b], diff)
        diff = diff * min(1.0, 2.5 / diff.norm().item())
        unit = cond[b] / cond[b].norm()
        orth = diff - (diff * unit).sum() * unit
        torch.testing.assert_close(out[b], cond[b] + 3.0 * orth)
    same, _ = normalized_guidance(cond, uncond, 1.0)
    torch.testing.assert_close(same, cond)


# ---- save / load, input checks, trainer ----------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    tok = randomize_(tiny("flow")).eval()
    back = assert_save_load_round_trip(
        tok, tmp_path / "ckpt", x=images(2),
        run=lambda model, x: model(x, steps=2, generator=torch.Generator().manual_seed(0))[0])
    assert isinstance(back, T.FlexTok)


def test_bad_input_names_the_argument():
    tok = tiny().eval()
    with pytest.raises(ValueError, match="x must be 16 x 16"):
        tok.encode(torch.rand(1, 3, 20, 20))
    with pytest.raises(ValueError, match="3 channels"):
        tok.encode(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"x values must be in \[0, 1\]"):
        tok.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
    tokens = torch.zeros(2, 8, dtype=torch.long)
    for bad in (torch.tensor([0, 3]), torch.tensor([9, 3]), 0):
        with pytest.raises(ValueError, match=r"lengths must be in \[1, 8\]"):
            tok.decode_tokens(tokens, lengths=bad)
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 64000\)"):
        tok.decode_tokens(torch.full((2, 8), 64000))
    with pytest.raises(ValueError, match="tokens must have shape"):
        tok.decode_tokens(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="z_q must have shape"):
        tok.decode(torch.zeros(2, 5, 1, 8))
    flow = tiny("flow").eval()
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        flow.decode_tokens(tokens, steps=0)
    with pytest.raises(ValueError, match="noise must be a tensor of shape"):
        flow.decode_tokens(tokens, noise=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="image_size 18 must be divisible by patch_size 4"):
        FlexTokConfig(**{**TINY, "image_size": 18})


def test_trainer_uses_the_flow_loss(tmp_path):
    import json

    from imtok.train import TokenizerTrainer, TrainConfig, split_images

    tok = tiny("flow")
    seen = []
    tok.register_forward_hook(lambda m, args, out: seen.append(float(out[1]["rec_loss"].detach())) if m.training else None)
    cfg = TrainConfig(out=str(tmp_path), steps=2, batch_size=4, warmup=1, crop=16, heldout=0, log_every=1,
                      eval_every=0, save_every=0, progress=False)
    TokenizerTrainer(tok, cfg, data=split_images(None, 16)).fit()
    rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl") if '"rec_loss"' in l]
    assert [r["rec_loss"] for r in rows] == pytest.approx(seen, rel=1e-5)
