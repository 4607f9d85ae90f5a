"""Binary 1D tokenizer (Instella-T2I bits on TiTok's ViT): the quantizer's conventions restated, fused ==
reference, gradients, per-sample lengths == separate calls, save/load, input checks. Tiny configs."""

import pytest
import torch
import torch.nn.functional as F

import imtok
import imtok.tokenizers as T
from _tokenizer_checks import assert_save_load_round_trip
from imtok.layers.quantize import BinaryQuantize
from imtok.tokenizers.binary import BinaryTokenizerConfig


def tiny_binary(**kw):
    cfg = dict(image_size=16, patch_size=4, enc_width=32, enc_depth=1, enc_heads=2, dec_width=32, dec_depth=2,
               dec_heads=2, num_latent_tokens=8, token_size=6, init_std=None)
    cfg.update(kw)
    return T.BinaryTokenizer(BinaryTokenizerConfig(**cfg))


def images(b=3, size=16):
    torch.manual_seed(b * 10 + size)
    return torch.rand(b, 3, size, size)


def test_registry_published_and_tiny_sizes():
    fam, fields, _ = T.REGISTRY["binary-b-128"]
    cfg = T.FAMILIES[fam].config_class(**fields)
    assert (cfg.num_latent_tokens, cfg.token_size, cfg.image_size, cfg.enc_width) == (128, 64, 256, 768)
    tok = T.create("binary-tiny").eval()
    x = images(2, 32)
    with torch.no_grad():
        recon, info = tok(x)
    bits = info["min_encoding_indices"]
    assert recon.shape == x.shape and bits.shape == (2, 1, 32, 16) and bits.dtype == torch.int64
    assert set(bits.unique().tolist()) <= {0, 1}
    assert tok.codebook_size is None and tok.bits_per_token == 16


def test_quantizer_conventions():
    q = BinaryQuantize(5, temperature=0.5)
    z = torch.randn(4000, 5, requires_grad=True)
    q.eval()
    bits, hard, info = q(z)
    assert torch.equal(bits, (torch.sigmoid(z) > 0.5).float()) and torch.equal(hard, bits.long())
    assert float(info["quantizer_loss"]) == 0
    q.train()
    torch.manual_seed(0)
    bits, hard, info = q(z)
    p = torch.sigmoid(z / 0.5)
    assert torch.equal(bits.detach(), hard.float()) and set(hard.unique().tolist()) <= {0, 1}
    torch.testing.assert_close(info["quantizer_loss"], (p * (1 - p)).mean())
    # Bernoulli(p): the ones' frequency follows p (4000 draws per bit; 6 standard errors)
    assert ((hard.float() - p.detach()).mean(0).abs() < 6 * 0.5 / 4000 ** 0.5).all()
    # straight-through: d bits / d z = d p / d z
    g = torch.randn_like(z)
    (bits * g).sum().backward()
    torch.testing.assert_close(z.grad, g * p.detach() * (1 - p.detach()) / 0.5)


@pytest.mark.parametrize("training", [False, True])
def test_fused_equals_reference(training):
    tok = tiny_binary().train(training)
    x = images(4)
    torch.manual_seed(1)
    out_f, info_f = tok(x)
    with imtok.use_reference():
        torch.manual_seed(1)
        out_r, info_r = tok(x)
    assert torch.equal(info_f["min_encoding_indices"], info_r["min_encoding_indices"])
    torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(info_f["quantizer_loss"], info_r["quantizer_loss"])


def test_gradients_reach_every_trainable_parameter():
    tok = tiny_binary().train()
    x = images(2)
    recon, info = tok(x, lengths=torch.tensor([8, 5]))
    (F.mse_loss(recon, x) + info["quantizer_loss"]).backward()
    missing = [n for n, p in tok.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing


@pytest.mark.parametrize("reference", [False, True])
def test_per_sample_lengths_equal_separate_calls(reference):
    tok = tiny_binary().eval()
    x = images(5)
    lengths = torch.tensor([1, 8, 3, 5, 3])
    with torch.no_grad(), imtok.use_reference(reference):
        bits = tok.encode(x)[1]["min_encoding_indices"]
        batched = tok.decode_tokens(bits, lengths=lengths)
        alone = torch.cat([tok.decode_tokens(bits[b:b + 1, :, :int(n)]) for b, n in enumerate(lengths)])
        z_q, _ = tok.encode(x)
        torch.testing.assert_close(tok.decode(z_q, lengths=lengths), batched)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip_bit_exact(tmp_path):
    tok = tiny_binary(binary_temperature=0.7)
    assert tok.family == "binary"
    loaded = assert_save_load_round_trip(tok, tmp_path, x=images(2))
    assert type(loaded) is T.BinaryTokenizer and loaded.quantize.temperature == 0.7


def test_bad_input_names_the_argument():
    tok = tiny_binary()
    with pytest.raises(ValueError, match=r"x must be 16 x 16"):
        tok.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"x values must be in \[0, 1\]"):
        tok.encode(torch.rand(1, 3, 16, 16) + 1)
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 2\)"):
        tok.decode_tokens(torch.full((1, 8, 6), 2))
    with pytest.raises(TypeError, match="tokens must be an integer tensor"):
        tok.decode_tokens(torch.zeros(1, 8, 6))
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, n, 6\]"):
        tok.decode_tokens(torch.zeros(1, 8, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, n, 6\]"):
        tok.decode_tokens(torch.zeros(1, 9, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 8\]"):
        tok.decode_tokens(torch.zeros(2, 8, 6, dtype=torch.long), lengths=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="no codebook"):
        BinaryTokenizerConfig(perturbation={"alpha": 0.5})
    with pytest.raises(ValueError, match="binary_temperature"):
        BinaryTokenizerConfig(binary_temperature=0.0)


def test_trainer_anneals_the_temperature(tmp_path):
    """binary_temperature_end: geometric decay from the quantizer's own temperature (step 0) to the end value (last
    step); without it the temperature stays; asked of a model without binary quantizer it is an error."""
    from imtok.train import TokenizerTrainer, TrainConfig, split_images

    data = split_images(None, 16)
    cfg = dict(out=str(tmp_path), steps=5, batch_size=4, lr=1e-3, warmup=1, crop=16, heldout=4, log_every=1,
               eval_every=0, save_every=0, progress=False)
    for end, want in ((0.25, [2.0 * 0.125 ** (s / 4) for s in range(5)]), (0.0, [2.0] * 5)):
        tok = tiny_binary(binary_temperature=2.0)
        tr = TokenizerTrainer(tok, TrainConfig(**cfg, binary_temperature_end=end), data=data)
        batches = iter(tr.batches(0))
        seen = []
        for step in range(5):
            tr.train_step(next(batches), step)
            seen.append(tok.quantize.temperature)
        assert seen == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="binary_temperature_end must be >= 0"):
        TokenizerTrainer(tiny_binary(), TrainConfig(**cfg, binary_temperature_end=-1.0), data=data)
    with pytest.raises(ValueError, match="needs a BinaryQuantize"):
        TokenizerTrainer(T.create("titok-tiny"),
                         TrainConfig(**cfg, binary_temperature_end=0.5), data=data)
