"""Checks every tokenizer family's tests share."""
import json

import torch

import imtok.tokenizers as T


def assert_save_load_round_trip(tok, path, run=lambda model, x: model(x)[0], x=None):
    """save_pretrained / from_pretrained: config.json names the family; the loaded model has the same class, config
    and tensors bit for bit, and run(model, x) (default: forward's images) gives the same output. Returns it."""
    tok.save_pretrained(path)
    assert json.loads((path / "config.json").read_text())["family"] == tok.family
    loaded = T.Tokenizer.from_pretrained(path)
    assert type(loaded) is type(tok) and loaded.config == tok.config
    sd, sd2 = tok.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    tok.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(run(tok, x), run(loaded, x))
    return loaded
