"""load_official against fixtures made by the official code (tests/fixtures/make_*.py, README.md there):
the same tokens exactly and the same outputs within fp32 tolerance, on the fused and the reference path."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

import imtok
import imtok.tokenizers as T

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# fp32 outputs of two implementations of the same math (different summation orders, SDPA vs MHA)
TOL = dict(rtol=1e-4, atol=1e-4)


def _load(family_dir, case=""):
    prefix = f"{case}_" if case else ""
    sd = {k: v.float() for k, v in load_file(os.path.join(HERE, family_dir, f"{prefix}state_dict.safetensors")).items()}
    io = load_file(os.path.join(HERE, family_dir, f"{prefix}io.safetensors"))
    with open(os.path.join(HERE, family_dir, "meta.json")) as f:
        meta = json.load(f)
    return sd, io, meta


@pytest.mark.parametrize("reference", [False, True])
def test_llamagen_vq(reference):
    sd, io, meta = _load("llamagen_vq")
    sd["quantize.codebook_used"] = torch.zeros(65536)  # the official state dict carries its usage ring buffer
    tok = T.load_official("llamagen-vq", sd, meta["model_args"])
    assert isinstance(tok, T.VQGAN) and tok.config.ch == 32 and tok.config.num_res_blocks == 1
    with torch.no_grad(), imtok.use_reference(reference):
        z_q, info = tok.encode(io["x"])
        assert torch.equal(info["min_encoding_indices"].reshape(-1), io["tokens"])
        torch.testing.assert_close(tok.decode(z_q), (io["recon"] + 1) / 2, **TOL)
        shape = tuple(io["latent_shape"].tolist())
        torch.testing.assert_close(tok.decode_code(io["tokens"], shape=shape), (io["recon_code"] + 1) / 2, **TOL)


@pytest.mark.parametrize("case", ["single_stage", "legacy"])
@pytest.mark.parametrize("reference", [False, True])
def test_titok(case, reference):
    sd, io, meta = _load("titok", case)
    tok = T.load_official("titok", sd, meta["cases"][case]["config"])
    assert tok.config.head == ("legacy" if case == "legacy" else "pixel")
    with torch.no_grad(), imtok.use_reference(reference):
        z_q, info = tok.encode(io["x"])
        assert torch.equal(info["min_encoding_indices"], io["tokens"])
        torch.testing.assert_close(tok.decode(z_q), io["out"], **TOL)
        torch.testing.assert_close(tok.decode_tokens(io["tokens"]), io["out_tokens"], **TOL)
        if case == "single_stage":  # the legacy (finetune_decoder) model zeroes its losses
            torch.testing.assert_close(info["quantizer_loss"].reshape(1), io["quantizer_loss"], **TOL)


@pytest.mark.parametrize("reference", [False, True])
def test_one_d_piece(reference):
    sd, io, meta = _load("one_d_piece", "stage1")
    tok = T.load_official("one-d-piece", sd, meta["cases"]["stage1"]["config"])
    assert isinstance(tok, T.OneDPiece) and tok.config.legacy_reshape
    with torch.no_grad(), imtok.use_reference(reference):
        z_q, info = tok.encode(io["x"])
        assert torch.equal(info["min_encoding_indices"], io["tokens"])
        torch.testing.assert_close(tok.decode(z_q), io["out"], **TOL)
        torch.testing.assert_close(tok.decode(z_q, lengths=3), io["out_length3"], **TOL)
        torch.testing.assert_close(tok.decode_tokens(io["tokens"], lengths=5), io["out_tokens_length5"], **TOL)
        # what the anchor cannot do: one pass with a length per sample
        mixed = tok.decode_tokens(io["tokens"], lengths=torch.tensor([3, 5]))
        torch.testing.assert_close(mixed[0], io["out_length3"][0], **TOL)
        torch.testing.assert_close(mixed[1], io["out_tokens_length5"][1], **TOL)


def test_load_official_rejects_what_it_cannot_map():
    sd, _, meta = _load("titok", "single_stage")
    cfg = json.loads(json.dumps(meta["cases"]["single_stage"]["config"]))
    del cfg["model"]["vq_model"]["vit_enc_num_heads"]
    with pytest.raises(ValueError, match="vit_enc_num_heads"):
        T.load_official("titok", sd, cfg)
    cfg["model"]["vq_model"]["quantize_mode"] = "vae"
    with pytest.raises(ValueError, match="quantize_mode"):
        T.load_official("titok", sd, cfg)
    with pytest.raises(ValueError, match="family must be"):
        T.load_official("maskgit", sd, cfg)
    with pytest.raises(ValueError, match="ModelArgs"):
        T.load_official("llamagen-vq", {}, {"ch": 32})
