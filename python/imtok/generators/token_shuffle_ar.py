"""Token-Shuffle AR: the LlamaGen GPT on s x s shuffled tokens, s^2 tokens per step (no official code; the
convention of specs/token_reduction.md).

Image tokens live on an (h s) x (w s) grid in raster order (block_size = h w s^2 tokens, h = w).
  compress MLP:  token embeddings [B, (h s)(w s), D] -> token_shuffle ('b (h s1 w s2) d -> b (h w) (s1 s2 d)')
                 + Linear(s^2 D -> D) (one fused op: imtok_cuda.shuffle.shuffle_linear) -> GELU -> Linear(D -> D)
  expand MLP:    transformer output [B, h w, D] -> Linear(D -> D) -> GELU -> Linear(D -> s^2 D) + token_unshuffle
                 (fused: linear_unshuffle) -> RMSNorm -> output head
Coarse position j predicts the s^2 tokens of block j (the class token predicts block 0); they are sampled
independently. The transformer, 2D RoPE (on the h x w coarse grid), CFG and KV cache are the plain model's.

Decoding order: coarse raster positions, each followed by its s x s block row-major, i.e. the image tokens
shuffled with an (n x 1) coarse grid. forward(), decode_step() and embed_tokens() work in decoding order;
training_loss() takes and generate() returns image tokens in raster order. With s = 1 no MLP is built and
the model is LlamaGenGPT (same parameters, same outputs). Under imtok.use_reference() the shuffles run
imtok_cuda.reference.shuffle.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

import imtok_cuda.shuffle as fused_shuffle
from imtok_cuda.reference import shuffle as ref_shuffle

from ..layers.switch import reference_enabled
from .ar import GPT_SIZES, LlamaGenGPT
from .base import register

__all__ = ["TokenShuffleGPT", "raster_to_decoding_order", "decoding_to_raster_order"]


def _shuffle_ops():
    return ref_shuffle if reference_enabled() else fused_shuffle


def raster_to_decoding_order(tokens: torch.Tensor, h: int, w: int, s: int) -> torch.Tensor:
    """[B, (h s)(w s)] raster ids -> [B, h w s s] ids in decoding order (each s x s block contiguous)."""
    B = tokens.shape[0]
    return tokens.reshape(B, h, s, w, s).permute(0, 1, 3, 2, 4).reshape(B, -1)


def decoding_to_raster_order(tokens: torch.Tensor, h: int, w: int, s: int) -> torch.Tensor:
    B = tokens.shape[0]
    return tokens.reshape(B, h, w, s, s).permute(0, 1, 3, 2, 4).reshape(B, -1)


class TokenShuffleGPT(LlamaGenGPT):
    """LlamaGenGPT(**kwargs) on shuffle x shuffle shuffled tokens; block_size counts image tokens (h w s^2)."""

    def __init__(self, shuffle: int = 2, **kwargs):
        if shuffle < 1:
            raise ValueError(f"shuffle must be >= 1, got {shuffle}")
        block_size = kwargs.get("block_size", 256)
        positions = block_size // (shuffle * shuffle)
        side = math.isqrt(positions)
        if shuffle > 1 and (positions * shuffle * shuffle != block_size or side * side != positions):
            raise ValueError(f"block_size ({block_size}) must be shuffle^2 = {shuffle * shuffle} times a square")
        self.shuffle = shuffle  # read by tokens_per_step while the base class builds the RoPE table
        super().__init__(**kwargs)
        self.config = {"shuffle": shuffle, **self.config}
        self.grid = (side, side)
        if shuffle > 1:
            d, s2 = self.dim, shuffle * shuffle
            self.compress_in = nn.Linear(s2 * d, d)
            self.compress_out = nn.Linear(d, d)
            self.expand_in = nn.Linear(d, d)
            self.expand_out = nn.Linear(d, s2 * d)
            for m in (self.compress_in, self.compress_out, self.expand_in, self.expand_out):
                nn.init.normal_(m.weight, 0.0, self.initializer_range)
                nn.init.zeros_(m.bias)

    @property
    def tokens_per_step(self) -> int:
        return self.shuffle * self.shuffle

    def _compress(self, e, h, w):
        x = _shuffle_ops().shuffle_linear(e, h, w, self.shuffle, self.compress_in.weight, self.compress_in.bias)
        return self.compress_out(F.gelu(x))

    def _expand(self, y, h, w):
        y = F.gelu(self.expand_in(y))
        return _shuffle_ops().linear_unshuffle(y, h, w, self.shuffle, self.expand_out.weight, self.expand_out.bias)

    def embed_tokens(self, idx):
        e = self.tok_embeddings(idx)
        if self.shuffle == 1:
            return e
        return self._compress(e, idx.shape[1] // self.tokens_per_step, 1)

    def head(self, h):
        if self.shuffle == 1:
            return super().head(h)
        return self.output(self.norm(self._expand(h, h.shape[1], 1))).float()

    def training_loss(self, tokens, cond):
        """Cross-entropy of every image token; tokens [B, block_size] in raster order, cond [B] class ids.
        The shuffles run on the whole (h s) x (w s) grid (one fused op each way)."""
        if self.shuffle == 1:
            return super().training_loss(tokens, cond)
        if tokens.dim() != 2 or tokens.shape[1] != self.block_size:
            raise ValueError(f"tokens must be [B, block_size = {self.block_size}], got {tuple(tokens.shape)}")
        self._check_cond(cond)
        gh, gw = self.grid
        x = self._compress(self.tok_embeddings(tokens), gh, gw)[:, :-1]
        c = self.cls_embedding(cond, train=self.training)[:, :self.cls_token_num]
        h = self.tok_dropout(torch.cat([c, x], dim=1))
        h = self._transformer(h, torch.arange(h.shape[1], device=h.device))[:, self.cls_token_num - 1:]
        logits = self.output(self.norm(self._expand(h, gh, gw))).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
        acc = (logits.argmax(-1) == tokens).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": acc}

    def _tokens_out(self, seq):
        if self.shuffle == 1:
            return seq
        return decoding_to_raster_order(seq, *self.grid, self.shuffle)


def _token_shuffle_gpt(size):
    n_layer, n_head, dim = GPT_SIZES[size]

    def build(**overrides):
        cfg = dict(n_layer=n_layer, n_head=n_head, dim=dim, shuffle=2)
        if size == "tiny":  # a 16 x 16 token grid, 8 x 8 coarse positions
            cfg.update(vocab_size=1024, block_size=256, num_classes=10, multiple_of=32, token_dropout_p=0.0,
                       resid_dropout_p=0.0, ffn_dropout_p=0.0)
        cfg.update(overrides)
        return TokenShuffleGPT(**cfg)
    return build


for _size in GPT_SIZES:
    register(f"token-shuffle-gpt-{_size}", _token_shuffle_gpt(_size))
