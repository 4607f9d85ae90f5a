"""Pure-PyTorch reference for Token-Shuffle (no official code; the convention of the spec):

shuffle:   [B, (H s)(W s), D] -> [B, H W, s*s*D]   as 'b (h s1 w s2) d -> b (h w) (s1 s2 d)'
unshuffle: the inverse. (F.pixel_unshuffle orders channels (c s1 s2): a different layout.)
h and w are the token grid AFTER shuffling (the input grid is (h*s) x (w*s)).
"""
import torch
from einops import rearrange


def token_shuffle(x: torch.Tensor, h: int, w: int, s: int) -> torch.Tensor:
    return rearrange(x, "b (h s1 w s2) d -> b (h w) (s1 s2 d)", h=h, w=w, s1=s, s2=s)


def token_unshuffle(x: torch.Tensor, h: int, w: int, s: int) -> torch.Tensor:
    return rearrange(x, "b (h w) (s1 s2 d) -> b (h s1 w s2) d", h=h, w=w, s1=s, s2=s)


def shuffle_linear(x, h, w, s, weight, bias=None):
    """Token shuffle followed by Linear(s*s*D -> out)."""
    return torch.nn.functional.linear(token_shuffle(x, h, w, s), weight, bias)


def linear_unshuffle(x, h, w, s, weight, bias=None):
    """Linear(in -> s*s*D) followed by token unshuffle."""
    return token_unshuffle(torch.nn.functional.linear(x, weight, bias), h, w, s)
