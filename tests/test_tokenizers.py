"""Discrete tokenizers (imtok.tokenizers): API, registry, fused == reference, gradients, the anchors' STE and loss
conventions restated independently, save/load, per-sample lengths, input checks. Tiny configs only."""

import pytest
import torch
import torch.nn.functional as F

import imtok
import imtok.tokenizers as T
from _tokenizer_checks import assert_save_load_round_trip
from imtok.layers.quantize import VectorQuantize
from imtok.tokenizers.titok import TiTokConfig


def tiny_titok(cls=T.TiTok, **kw):
    cfg = dict(image_size=16, patch_size=4, enc_width=32, enc_depth=1, enc_heads=2, dec_width=32, dec_depth=2,
               dec_heads=2, num_latent_tokens=8, token_size=6, codebook_size=64)
    cfg.update(kw)
    return cls(TiTokConfig(**cfg))


def tiny_legacy_titok(**kw):
    return tiny_titok(head="legacy", legacy_reshape=True, num_legacy_codes=16,
                      pixel_decoder={"hidden_channels": 32, "channel_mult": [1, 1, 1], "num_res_blocks": 1,
                                     "z_channels": 8, "num_codes": 16}, **kw)


def tiny_vqgan(**kw):
    cfg = dict(ch=32, encoder_ch_mult=(1, 1), decoder_ch_mult=(1, 1), num_res_blocks=1, z_channels=32,
               codebook_size=64)
    cfg.update(kw)
    return T.VQGAN(**cfg)


MODELS = {"vqgan": (tiny_vqgan, 16), "titok": (tiny_titok, 16), "titok-legacy": (tiny_legacy_titok, 16),
          "one-d-piece": (lambda **kw: tiny_titok(T.OneDPiece, tail_drop="batch", **kw), 16)}


def images(b=3, size=16):
    return torch.rand(b, 3, size, size)


# ---- registry and API ---------------------------------------------------------------------------------------
def test_registry_names_published_and_tiny_sizes():
    names = T.available()
    for n in ("vqgan-tiny", "llamagen-vq16", "llamagen-vq8", "titok-s-128", "titok-b-64", "titok-l-32",
              "titok-tiny", "one-d-piece-s-256", "one-d-piece-tiny", "titok-bl-64-vq8k"):
        assert n in names and names[n]
    fam, fields, _ = T.REGISTRY["titok-s-128"]
    cfg = T.FAMILIES[fam].config_class(**fields)
    assert (cfg.enc_width, cfg.enc_depth, cfg.enc_heads, cfg.num_latent_tokens, cfg.codebook_size,
            cfg.token_size, cfg.use_l2_norm) == (512, 8, 8, 128, 4096, 12, True)
    fam, fields, _ = T.REGISTRY["llamagen-vq16"]
    cfg = T.FAMILIES[fam].config_class(**fields)
    assert (cfg.ch, cfg.encoder_ch_mult, cfg.codebook_size, cfg.codebook_embed_dim) == (128, (1, 1, 2, 2, 4), 16384, 8)
    with pytest.raises(ValueError, match="unknown tokenizer"):
        T.create("titok-xxl")


@pytest.mark.parametrize("name,tokens_shape", [("vqgan-tiny", (2, 8, 8)), ("titok-tiny", (2, 1, 32)),
                                               ("one-d-piece-tiny", (2, 1, 64))])
def test_create_tiny_runs_on_32px(name, tokens_shape):
    tok = T.create(name).eval()
    x = images(2, 32)
    with torch.no_grad():
        recon, info = tok(x)
    assert recon.shape == x.shape and recon.dtype == torch.float32
    assert tuple(info["min_encoding_indices"].shape) == tokens_shape
    assert info["min_encoding_indices"].dtype == torch.int64


def test_create_overrides_fields():
    tok = T.create("titok-tiny", codebook_size=128, enc_depth=1, dec_depth=1)
    assert tok.config.codebook_size == 128 and tok.quantize.embedding.weight.shape == (128, 12)
    assert isinstance(T.create("one-d-piece-tiny", enc_depth=1, dec_depth=1), T.OneDPiece)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_shapes_and_dtypes(kind):
    make, size = MODELS[kind]
    tok = make().eval()
    x = images(2, size)
    with torch.no_grad():
        z_q, info = tok.encode(x)
        idx = info["min_encoding_indices"]
        out = tok.decode(z_q)
        out_tokens = tok.decode_tokens(idx)
    assert z_q.dtype == torch.float32 and idx.dtype == torch.int64
    if kind == "vqgan":
        assert z_q.shape == (2, 8, 8, 8) and idx.shape == (2, 8, 8)
    else:
        assert z_q.shape == (2, 6, 1, 8) and idx.shape == (2, 1, 8)
    assert out.shape == (2, 3, size, size)
    torch.testing.assert_close(out, out_tokens, rtol=1e-5, atol=1e-5)
    for k in ("quantizer_loss", "codebook_loss", "commitment_loss", "perplexity"):
        assert info[k].dim() == 0


def test_legacy_head_without_pixel_decoder_returns_code_logits():
    tok = tiny_titok(head="legacy", legacy_reshape=True, num_legacy_codes=16).eval()
    with torch.no_grad():
        out, _ = tok(images(2))
    assert out.shape == (2, 16, 4, 4)


# ---- fused == reference ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("training", [False, True])
def test_fused_equals_reference(kind, training):
    make, size = MODELS[kind]
    tok = make(perturbation={"alpha": 0.5, "beta": 0.5, "delta": 4}).train(training)
    x = images(4, size)
    torch.manual_seed(1)
    out_f, info_f = tok(x)
    with imtok.use_reference():
        tok.quantize.set_step(0)
        torch.manual_seed(1)
        out_r, info_r = tok(x)
    assert torch.equal(info_f["min_encoding_indices"], info_r["min_encoding_indices"])
    torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(info_f["quantizer_loss"], info_r["quantizer_loss"])
    if training:
        assert info_f["num_perturbed"] == info_r["num_perturbed"]


def test_reference_switch_reaches_the_quantizer(monkeypatch):
    calls = []
    import imtok_cuda.reference.vq as ref

    real = ref.nearest
    monkeypatch.setattr(ref, "nearest", lambda *a, **k: calls.append(1) or real(*a, **k))
    tok = tiny_titok().eval()
    with torch.no_grad():
        tok.encode(images(1))
        assert not calls
        with imtok.use_reference():
            tok.encode(images(1))
    assert calls


# ---- gradients ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_gradients_reach_every_trainable_parameter(kind):
    make, size = MODELS[kind]
    tok = make(entropy_loss_ratio=0.1) if kind == "vqgan" else make()
    tok.train()
    x = images(2, size)
    recon, info = tok(x, lengths=None if kind == "vqgan" else torch.tensor([8, 5]))
    target = x if recon.shape[1] == 3 else torch.zeros_like(recon)
    (F.mse_loss(recon, target) + info["quantizer_loss"]).backward()
    missing = [n for n, p in tok.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing


# ---- the anchors' conventions, restated ------------------------------------------------------------------------
def test_quantizer_matches_llamagen_titok_math():
    torch.manual_seed(3)
    vq = VectorQuantize(32, 6, beta=0.25, l2_norm=True).train()
    z = torch.randn(2, 5, 6, requires_grad=True)
    z_q, idx, info = vq(z)
    # independent restatement: normalize, squared euclidean distance, argmin, losses with beta on the commitment
    zn = z.detach() / z.detach().norm(dim=-1, keepdim=True)
    cb = vq.embedding.weight.detach() / vq.embedding.weight.detach().norm(dim=-1, keepdim=True)
    want = torch.cdist(zn.reshape(-1, 6).double(), cb.double()).argmin(-1).reshape(2, 5)
    assert torch.equal(idx, want)
    e = cb[want]
    torch.testing.assert_close(info["codebook_loss"], ((e - zn) ** 2).mean())
    torch.testing.assert_close(info["commitment_loss"], 0.25 * ((e - zn) ** 2).mean())
    torch.testing.assert_close(z_q.detach(), e)  # forward value: the code itself
    # straight-through: d z_q / d z is the Jacobian of the l2 normalization (no path through the argmin)
    g = torch.randn_like(z)
    (z_q * g).sum().backward()
    zz = z.detach().clone().requires_grad_(True)
    (F.normalize(zz, dim=-1) * g).sum().backward()
    torch.testing.assert_close(z.grad, zz.grad)


def test_quantizer_loss_gradients_without_normalization():
    vq = VectorQuantize(16, 4, beta=0.25, l2_norm=False).train()
    z = torch.randn(10, 4, requires_grad=True)
    _, idx, info = vq(z)
    info["quantizer_loss"].backward()
    e = vq.embedding.weight.detach()[idx]
    n = z.numel()
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z.detach() - e) / n)  # commitment term only reaches z
    want = torch.zeros_like(vq.embedding.weight).index_add_(0, idx, 2 * (e - z.detach()) / n)
    torch.testing.assert_close(vq.embedding.weight.grad, want)  # codebook term only reaches the codes


def test_entropy_loss_matches_llamagen_formula():
    vq = VectorQuantize(16, 4, entropy_loss_ratio=0.5).train()
    z = torch.randn(20, 4)
    _, _, info = vq(z)
    zn, cb = F.normalize(z, dim=-1), F.normalize(vq.embedding.weight.detach(), dim=-1)
    aff = -torch.cdist(zn.double(), cb.double()) ** 2 / 0.01
    p = aff.softmax(-1)
    avg = p.mean(0)
    want = -(p * aff.log_softmax(-1)).sum(-1).mean() + (avg * torch.log(avg + 1e-5)).sum()
    torch.testing.assert_close(info["entropy_loss"].double(), 0.5 * want, rtol=1e-4, atol=1e-5)


def test_latent_perturbation_first_samples_only_and_annealed():
    vq = VectorQuantize(64, 4, perturbation={"alpha": 1.0, "beta": 0.5, "delta": 8, "end_ratio": 0.5,
                                             "anneal_start": 2, "anneal_end": 6}).train()
    z = torch.randn(4, 16, 4)
    vq.eval()
    _, clean, _ = vq(z)
    z_q_eval, _, info = vq(z)
    assert "num_perturbed" not in info
    vq.train()
    z_q, idx, info = vq(z)
    codes = vq.codebook().detach()
    assert torch.equal(idx, clean)  # the tokens stay the clean ones; only what the decoder sees changes
    changed = ~torch.isclose(z_q.detach(), codes[clean]).all(-1)
    assert not changed[2:].any() and changed[:2].any()
    assert info["num_perturbed"] == int(changed.sum())
    assert vq.perturbation_schedule() == (1.0, 8)
    vq.set_step(4)
    assert vq.perturbation_schedule() == (0.75, 6)
    vq.set_step(100)
    assert vq.perturbation_schedule() == (0.5, 4)


def test_vqgan_works_in_minus_one_one_and_decode_code_matches_llamagen_shapes():
    tok = tiny_vqgan().eval()
    x = images(2)
    with torch.no_grad():
        z_q, info = tok.encode(x)
        h = tok.quant_conv(tok.encoder(x * 2 - 1))
        assert torch.equal(info["min_encoding_indices"], tok.quantize(h.permute(0, 2, 3, 1))[1])
        idx = info["min_encoding_indices"]
        out = tok.decode_tokens(idx)
        torch.testing.assert_close(out, (tok.decoder(tok.post_quant_conv(z_q)) + 1) / 2)
        torch.testing.assert_close(tok.decode_code(idx.reshape(-1), shape=tuple(z_q.shape)), out)
        torch.testing.assert_close(tok.decode_tokens(idx.reshape(2, -1)), out)


def test_one_d_piece_tail_drop_one_end_per_batch():
    tok = tiny_titok(T.OneDPiece, tail_drop="batch").train()
    z_q, _ = tok.encode(images(3))
    torch.manual_seed(5)
    out = tok.decode(z_q)
    torch.manual_seed(5)
    end = int(torch.randint(1, 9, (1,)))
    torch.testing.assert_close(out, tok.decode(z_q, lengths=end))
    tok.eval()
    torch.testing.assert_close(tok.decode(z_q[..., :end]), tok.decode(z_q, lengths=end))


def test_tail_drop_per_sample_option():
    tok = tiny_titok(tail_drop="sample").train()
    z_q, _ = tok.encode(images(4))
    torch.manual_seed(6)
    out = tok.decode(z_q)
    torch.manual_seed(6)
    lengths = torch.randint(1, 9, (4,))
    torch.testing.assert_close(out, tok.decode(z_q, lengths=lengths))


# ---- per-sample lengths in one pass == each sample alone ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["titok", "titok-legacy", "one-d-piece"])
@pytest.mark.parametrize("reference", [False, True])
def test_per_sample_lengths_equal_separate_calls(kind, reference):
    make, size = MODELS[kind]
    tok = make().eval()
    x = images(5, size)
    lengths = torch.tensor([1, 8, 3, 5, 3])
    with torch.no_grad(), imtok.use_reference(reference):
        tokens = tok.encode(x)[1]["min_encoding_indices"]
        batched = tok.decode_tokens(tokens, lengths=lengths)
        alone = torch.cat([tok.decode_tokens(tokens[b:b + 1, :, :int(n)]) for b, n in enumerate(lengths)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_per_sample_lengths_run_one_packed_pass(monkeypatch):
    tok = tiny_titok().eval()
    calls = []
    real = tok.decoder.forward
    monkeypatch.setattr(tok.decoder, "forward", lambda z, lengths=None: calls.append(lengths) or real(z, lengths))
    tokens = torch.randint(0, 64, (4, 8))
    tok.decode_tokens(tokens, lengths=torch.tensor([2, 8, 8, 4]))
    tok.decode_tokens(tokens, lengths=torch.tensor([4, 4, 4, 4]))  # all equal: a plain truncation
    assert len(calls) == 2 and calls[0].tolist() == [2, 8, 8, 4] and calls[1] is None


# ---- save / load ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_save_load_round_trip_bit_exact(kind, tmp_path):
    make, size = MODELS[kind]
    tok = make(perturbation={"alpha": 1.0, "beta": 0.1, "delta": 4})
    tok.train()
    tok(images(2, size))  # moves the perturbation step counter
    assert_save_load_round_trip(tok, tmp_path, x=images(2, size))
    assert type(type(tok).from_pretrained(tmp_path)) is type(tok)


def test_from_pretrained_rejects_another_family(tmp_path):
    tiny_vqgan().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a TiTok"):
        T.TiTok.from_pretrained(tmp_path)


# ---- bad input -------------------------------------------------------------------------------------------------
def test_bad_images_name_the_argument():
    vqgan, titok = tiny_vqgan(), tiny_titok()
    with pytest.raises(ValueError, match=r"x height and width must be divisible by 2"):
        vqgan.encode(torch.rand(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"x must be 16 x 16"):
        titok.encode(torch.rand(1, 3, 32, 32))
    for tok in (vqgan, titok):
        with pytest.raises(ValueError, match="x must have 3 channels"):
            tok.encode(torch.rand(1, 1, 16, 16))
        with pytest.raises(ValueError, match=r"x values must be in \[0, 1\]"):
            tok.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
        with pytest.raises(ValueError, match=r"x values must be in \[0, 1\]"):
            tok.encode(torch.full((1, 3, 16, 16), float("nan")))
        with pytest.raises(TypeError, match="x must be a floating-point"):
            tok.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
        with pytest.raises(ValueError, match="x must have shape"):
            tok.encode(torch.rand(3, 16, 16))


def test_bad_tokens_and_lengths_name_the_argument():
    titok, vqgan = tiny_titok(), tiny_vqgan()
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 64\)"):
        titok.decode_tokens(torch.tensor([[0, 1, 64, 2, 3, 4, 5, 6]]))
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 64\)"):
        vqgan.decode_tokens(torch.full((1, 8, 8), -1))
    with pytest.raises(TypeError, match="tokens must be an integer tensor"):
        titok.decode_tokens(torch.zeros(1, 8))
    tokens = torch.zeros(2, 8, dtype=torch.long)
    for bad in (0, 9, torch.tensor([1, 9]), torch.tensor([0, 3])):
        with pytest.raises(ValueError, match=r"lengths must be in \[1, 8\]"):
            titok.decode_tokens(tokens, lengths=bad)
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 5\]"):
        titok.decode_tokens(tokens[:, :5], lengths=torch.tensor([2, 6]))
    with pytest.raises(ValueError, match=r"lengths must have shape \[B=2\]"):
        titok.decode_tokens(tokens, lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        titok.decode_tokens(tokens, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="lengths applies to 1D tokenizers"):
        vqgan.decode_tokens(torch.zeros(1, 8, 8, dtype=torch.long), lengths=3)
    with pytest.raises(ValueError, match="z_q must have shape"):
        titok.decode(torch.zeros(1, 6, 1, 9))


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="divisible by the patch size"):
        TiTokConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="tail_drop"):
        TiTokConfig(tail_drop="random")
    with pytest.raises(ValueError, match="perturbation delta must be <= 128"):
        VectorQuantize(4096, 12, perturbation={"delta": 200})
    with pytest.raises(ValueError, match="unknown keys"):
        VectorQuantize(16, 4, perturbation={"gamma": 1})
