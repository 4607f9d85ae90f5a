"""Image generators over token ids: MaskGIT (TiTok's), LlamaGen's GPT (AR, KV cache, CFG), Token-Shuffle AR,
and grouped speculative decoding for the AR models.

    import imtok.generators as G
    G.available()                              # registry names
    model = G.create("llamagen-gpt-tiny")      # random weights; keyword arguments override the config
    model = G.load_official("llamagen-gpt", state_dict, model_args_dict)
    model.save_pretrained(path); G.from_pretrained(path)
"""
from .ar import LlamaGenGPT
from .base import Generator, available, create, from_pretrained, register
from .maskgit import MaskGITGenerator, remaining_masked
from .official import load_official
from .speculative import speculative_generate
from .token_shuffle_ar import TokenShuffleGPT

__all__ = ["Generator", "LlamaGenGPT", "MaskGITGenerator", "TokenShuffleGPT", "available", "create",
           "from_pretrained", "load_official", "register", "remaining_masked", "speculative_generate"]
