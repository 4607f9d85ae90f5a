"""Class-conditional autoregressive generator with LlamaGen's GPT layout (FoundationVision/LlamaGen,
autoregressive/models/gpt.py): RMSNorm, SwiGLU, 2D RoPE, a class token in front, KV-cache decoding with CFG.

Conventions kept from the anchor (so its checkpoints and habits carry over):
  * sequence = [class embedding (cls_token_num = 1), image tokens]; the class token's RoPE table rows are ZERO
    (cos = sin = 0), so its query and key are zero vectors: every image token gives it a score of 0.
  * 2D RoPE: the first half of each head's pairs rotates with the row index, the second half with the column
    index (row-major grid of sqrt(block_size)^2 tokens); pairs are interleaved (x0, x1), (x2, x3) ...
  * class embedding table has num_classes + 1 rows when class_dropout_prob > 0; row num_classes is the null class.
  * forward(idx, cond_idx, targets) returns logits from the class position on: [B, T + 1, V] for T input
    tokens (training feeds tokens[:, :-1] and the targets are all tokens), loss = mean cross-entropy.
  * generate(cond, max_new_tokens, cfg_scale, cfg_interval, temperature, top_k, top_p): batch [cond; null],
    logits = uncond + cfg_scale (cond - uncond), then temperature, top-k (ties kept), top-p (the first token
    past p kept), multinomial (temperature 0: greedy). CFG stops after token cfg_interval + 1 (the anchor's
    counting; -1 = never stops); from there on only the conditional half of the batch is decoded.
Attention runs through imtok.layers.Attention (fused op / SDPA / reference under imtok.use_reference()), the
sampling through imtok_cuda.sampling (or its reference).
"""
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Attention, KVCache
from .base import Generator, check_long, register, sampling_ops

__all__ = ["LlamaGenGPT", "RMSNorm", "FeedForward", "precompute_rope_2d", "precompute_rope_1d", "apply_rope",
           "GPT_SIZES"]

# name -> (n_layer, n_head, dim): the published class-conditional sizes, and a CPU-scale one
GPT_SIZES = {
    "B": (12, 12, 768), "L": (24, 16, 1024), "XL": (36, 20, 1280), "XXL": (48, 24, 1536),
    "XXXL": (48, 40, 2560), "tiny": (4, 4, 128),
}


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 and cast back before the weight (as LlamaGen)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); hidden = multiple_of-rounded (ffn_dim_multiplier *) 2/3 * 4 dim."""

    def __init__(self, dim: int, multiple_of: int = 256, ffn_dim_multiplier: Optional[float] = None,
                 dropout: float = 0.0):
        super().__init__()
        hidden = int(2 * (4 * dim) / 3)
        if ffn_dim_multiplier is not None:
            hidden = int(ffn_dim_multiplier * hidden)
        hidden = find_multiple(hidden, multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def precompute_rope_2d(grid_size: int, head_dim: int, base: float = 10000, cls_token_num: int = 1):
    """[cls_token_num + grid_size^2, head_dim / 2, 2] (cos, sin); the class rows are zero."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    freqs = torch.outer(torch.arange(grid_size).float(), freqs)
    grid = torch.cat([freqs[:, None, :].expand(-1, grid_size, -1), freqs[None, :, :].expand(grid_size, -1, -1)],
                     dim=-1)
    table = torch.stack([torch.cos(grid), torch.sin(grid)], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, head_dim // 2, 2), table])


def precompute_rope_1d(seq_len: int, head_dim: int, base: float = 10000, cls_token_num: int = 1):
    """1D variant for token sequences that are not a square grid (e.g. TiTok's 1D tokens); class rows zero."""
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(seq_len).float(), freqs)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return torch.cat([torch.zeros(cls_token_num, head_dim // 2, 2), table])


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x [B, H, N, d] by table [N, d/2, 2] (cos, sin), in float32."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[..., 0], table[..., 1]
    out = torch.stack([xs[..., 0] * cos - xs[..., 1] * sin, xs[..., 1] * cos + xs[..., 0] * sin], dim=-1)
    return out.flatten(-2).type_as(x)


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class TransformerBlock(nn.Module):
    def __init__(self, dim, n_head, multiple_of, ffn_dim_multiplier, norm_eps, resid_dropout_p, ffn_dropout_p,
                 drop_path):
        super().__init__()
        self.attention = Attention(dim, n_head, qkv_bias=False, proj_bias=False)
        self.attention_dropout = nn.Dropout(resid_dropout_p)
        self.feed_forward = FeedForward(dim, multiple_of, ffn_dim_multiplier, ffn_dropout_p)
        self.attention_norm = RMSNorm(dim, eps=norm_eps)
        self.ffn_norm = RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, rope, kv_cache=None, causal=True):
        a = self.attention(self.attention_norm(x), causal=causal, rope=rope, kv_cache=kv_cache)
        h = x + self.drop_path(self.attention_dropout(a))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))


class LabelEmbedder(nn.Module):
    """Class embedding; row num_classes is the null class (present when dropout_prob > 0, as in LlamaGen)."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels, train: bool):
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)


class LlamaGenGPT(Generator):
    """LlamaGen's class-conditional GPT. Constructor arguments = the fields of LlamaGen's ModelArgs that a c2i
    model uses (same names and defaults), plus `rope` ("2d": the anchor, needs a square block_size; "1d" for
    1D tokenizers such as TiTok)."""

    def __init__(self, dim=4096, n_layer=32, n_head=32, n_kv_head=None, multiple_of=256, ffn_dim_multiplier=None,
                 rope_base=10000, norm_eps=1e-5, initializer_range=0.02, token_dropout_p=0.1, attn_dropout_p=0.0,
                 resid_dropout_p=0.1, ffn_dropout_p=0.1, drop_path_rate=0.0, num_classes=1000,
                 class_dropout_prob=0.1, vocab_size=16384, cls_token_num=1, block_size=256, rope="2d"):
        super().__init__()
        self._keep_config(dim=dim, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, multiple_of=multiple_of,
                          ffn_dim_multiplier=ffn_dim_multiplier, rope_base=rope_base, norm_eps=norm_eps,
                          initializer_range=initializer_range, token_dropout_p=token_dropout_p,
                          attn_dropout_p=attn_dropout_p, resid_dropout_p=resid_dropout_p,
                          ffn_dropout_p=ffn_dropout_p, drop_path_rate=drop_path_rate, num_classes=num_classes,
                          class_dropout_prob=class_dropout_prob, vocab_size=vocab_size, cls_token_num=cls_token_num,
                          block_size=block_size, rope=rope)
        if n_kv_head is not None and n_kv_head != n_head:
            raise NotImplementedError("grouped-query attention (n_kv_head != n_head) is not supported; LlamaGen's "
                                      "class-conditional models use n_kv_head = None")
        if attn_dropout_p:
            raise ValueError("attn_dropout_p > 0 is not supported (the shared attention layer has no dropout; "
                             "LlamaGen's default is 0.0)")
        if cls_token_num != 1:
            raise ValueError(f"class-conditional models use cls_token_num = 1, got {cls_token_num}")
        if dim % n_head or (dim // n_head) % 4:
            raise ValueError(f"dim / n_head must be a multiple of 4 for 2D RoPE, got dim={dim}, n_head={n_head}")
        self.dim, self.n_layer, self.n_head = dim, n_layer, n_head
        self.vocab_size, self.num_classes, self.block_size = vocab_size, num_classes, block_size
        self.cls_token_num = cls_token_num
        self.initializer_range = initializer_range
        self.cls_embedding = LabelEmbedder(num_classes, dim, class_dropout_prob)
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.tok_dropout = nn.Dropout(token_dropout_p)
        rates = [x.item() for x in torch.linspace(0, drop_path_rate, n_layer)]
        self.layers = nn.ModuleList([
            TransformerBlock(dim, n_head, multiple_of, ffn_dim_multiplier, norm_eps, resid_dropout_p, ffn_dropout_p,
                             rates[i]) for i in range(n_layer)])
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        self.register_buffer("freqs_cis", self._rope_table(rope, rope_base), persistent=False)
        self.initialize_weights()

    # ---- layout hooks (Token-Shuffle overrides them) -------------------------------------------------------
    @property
    def tokens_per_step(self) -> int:
        return 1

    @property
    def num_positions(self) -> int:
        """Image positions of the transformer: block_size image tokens, tokens_per_step per position."""
        return self.block_size // self.tokens_per_step

    def _rope_table(self, rope, base):
        head_dim = self.dim // self.n_head
        if rope == "2d":
            grid = math.isqrt(self.num_positions)
            if grid * grid != self.num_positions:
                raise ValueError(f"2D RoPE needs a square number of positions, got {self.num_positions} "
                                 "(use rope='1d' for 1D token sequences)")
            return precompute_rope_2d(grid, head_dim, base, self.cls_token_num)
        if rope == "1d":
            return precompute_rope_1d(self.num_positions, head_dim, base, self.cls_token_num)
        raise ValueError(f"rope must be '2d' or '1d', got {rope!r}")

    def embed_tokens(self, idx: torch.Tensor) -> torch.Tensor:
        """[B, n * tokens_per_step] token ids -> [B, n, dim] transformer inputs."""
        return self.tok_embeddings(idx)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """[B, n, dim] transformer outputs -> [B, n * tokens_per_step, V] float32 logits."""
        return self.output(self.norm(h)).float()

    # ---- model ---------------------------------------------------------------------------------------------
    def initialize_weights(self):
        std = self.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
        nn.init.zeros_(self.output.weight)

    def _transformer(self, h, positions, caches: Optional[List[KVCache]] = None, causal=True):
        table = self.freqs_cis[positions]

        def rope(q, k):
            return apply_rope(q, table), apply_rope(k, table)

        for i, layer in enumerate(self.layers):
            h = layer(h, rope, caches[i] if caches is not None else None, causal)
        return h

    def _check_cond(self, cond_idx):
        check_long("cond_idx", cond_idx, 1, 0, self.cls_embedding.embedding_table.num_embeddings)

    def forward(self, idx: torch.Tensor, cond_idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """Teacher-forced pass. idx [B, T] image tokens (T < block_size tokens), cond_idx [B] class ids
        (num_classes = the null class). Returns (logits [B, T + tokens_per_step, V] float32, loss or None);
        logits[:, j] predicts image token j. Class labels are dropped with class_dropout_prob in training mode."""
        self._check_cond(cond_idx)
        check_long("idx", idx, 2, 0, self.vocab_size)
        if idx.shape[0] != cond_idx.shape[0]:
            raise ValueError(f"idx has batch {idx.shape[0]} but cond_idx has {cond_idx.shape[0]}")
        if idx.shape[1] % self.tokens_per_step or idx.shape[1] >= self.block_size:
            raise ValueError(f"idx must hold fewer than block_size = {self.block_size} tokens in whole steps of "
                             f"{self.tokens_per_step}, got {idx.shape[1]}")
        cond = self.cls_embedding(cond_idx, train=self.training)[:, :self.cls_token_num]
        h = self.tok_dropout(torch.cat([cond, self.embed_tokens(idx)], dim=1))
        h = self._transformer(h, torch.arange(h.shape[1], device=h.device))
        logits = self.head(h[:, self.cls_token_num - 1:])
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def training_loss(self, tokens: torch.Tensor, cond: torch.Tensor):
        """Next-token loss of LlamaGen's training: forward(tokens[:, :-step], cond, targets=tokens).
        tokens [B, block_size], cond [B] class ids. Returns (loss, {"loss", "accuracy"})."""
        if tokens.dim() != 2 or tokens.shape[1] != self.block_size:
            raise ValueError(f"tokens must be [B, block_size = {self.block_size}], got {tuple(tokens.shape)}")
        logits, loss = self.forward(tokens[:, :-self.tokens_per_step], cond, targets=tokens)
        acc = (logits.argmax(-1) == tokens).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": acc}

    # ---- decoding ------------------------------------------------------------------------------------------
    def setup_caches(self, batch_size: int, max_len: int) -> List[KVCache]:
        p = self.tok_embeddings.weight
        return [KVCache(batch_size, self.n_head, max_len, self.dim // self.n_head, dtype=p.dtype, device=p.device)
                for _ in self.layers]

    def decode_step(self, h: torch.Tensor, start: int, caches: List[KVCache]) -> torch.Tensor:
        """Run inputs h [B, n, dim] at positions start .. start+n-1 through the cached transformer; returns logits
        [B, n * tokens_per_step, V]. The caches must hold exactly the `start` earlier positions."""
        if caches[0].length != start:
            raise RuntimeError(f"KV cache holds {caches[0].length} positions, expected {start}")
        positions = torch.arange(start, start + h.shape[1], device=h.device)
        return self.head(self._transformer(h, positions, caches, causal=h.shape[1] > 1))

    def _null_like(self, cond):
        if self.cls_embedding.dropout_prob <= 0:
            raise ValueError("classifier-free guidance needs the null class (class_dropout_prob > 0)")
        return torch.full_like(cond, self.num_classes)

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, max_new_tokens: Optional[int] = None, cfg_scale: float = 1.0,
                 cfg_interval: int = -1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: Optional[torch.Generator] = None, speculative: Optional[str] = None,
                 draft_len: int = 16, gsd_window: int = 7, prob_threshold: float = 0.15, dist_threshold: float = 0.5,
                 code_embedding: Optional[torch.Tensor] = None):
        """Sample image tokens [B, max_new_tokens] for class ids cond [B] (LlamaGen's argument names).

        max_new_tokens: defaults to the whole image (block_size tokens); must be a multiple of
        tokens_per_step. cfg_scale != 1 decodes [cond; null] and samples from uncond + cfg_scale (cond - uncond).
        speculative: None (one token step per forward pass), "gsd" (grouped speculative decoding with a Jacobi
        draft of draft_len tokens, clusters of +-gsd_window ranks; gsd_window=0 is speculative Jacobi decoding)
        or "sjd" (= "gsd" with gsd_window=0). code_embedding [V, D]: the tokenizer's code vectors for GSD's
        distance filter (default: the model's l2-normalised token embeddings). With speculative set the
        return value is (tokens, number of forward passes)."""
        self._check_cond(cond)
        step = self.tokens_per_step
        total = self.block_size
        n_tokens = total if max_new_tokens is None else int(max_new_tokens)
        if n_tokens <= 0 or n_tokens > total or n_tokens % step:
            raise ValueError(f"max_new_tokens must be in (0, {total}] and a multiple of {step}, got {n_tokens}")
        if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, "
                             f"{top_p}")
        if speculative is not None:
            if speculative not in ("gsd", "sjd"):
                raise ValueError(f"speculative must be None, 'gsd' or 'sjd', got {speculative!r}")
            from .speculative import speculative_generate
            return speculative_generate(
                self, cond, n_tokens, cfg_scale=cfg_scale, cfg_interval=cfg_interval, temperature=temperature,
                top_k=top_k, top_p=top_p, generator=generator, draft_len=draft_len,
                window=0 if speculative == "sjd" else gsd_window, prob_threshold=prob_threshold,
                dist_threshold=dist_threshold, code_embedding=code_embedding)
        return self._generate_plain(cond, n_tokens // step, cfg_scale, cfg_interval, temperature, top_k, top_p,
                                    generator)

    def _generate_plain(self, cond, steps, cfg_scale, cfg_interval, temperature, top_k, top_p, generator):
        ops = sampling_ops()
        B = cond.shape[0]
        guided = cfg_scale != 1.0
        cond_in = torch.cat([cond, self._null_like(cond)]) if guided else cond
        caches = self.setup_caches(cond_in.shape[0], self.cls_token_num + steps)
        h = self.cls_embedding(cond_in, train=False)[:, :self.cls_token_num]
        logits = self.decode_step(h, 0, caches)[:, -self.tokens_per_step:]
        out = []
        for t in range(steps):
            use_cfg = guided and (cfg_interval < 0 or t <= cfg_interval + 1)
            if guided and not use_cfg and logits.shape[0] > B:  # CFG is over: drop the unconditional half
                logits = logits[:B]
                for c in caches:
                    c.k, c.v = c.k[:B], c.v[:B]
            V = logits.shape[-1]
            nxt = ops.sample_logits(logits[:B].reshape(-1, V),
                                    logits[B:].reshape(-1, V) if use_cfg else None, cfg_scale=cfg_scale,
                                    temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            nxt = nxt.view(B, self.tokens_per_step)
            out.append(nxt)
            if t == steps - 1:
                break
            x = nxt.repeat(logits.shape[0] // B, 1)
            logits = self.decode_step(self.embed_tokens(x), self.cls_token_num + t, caches)
        return self._tokens_out(torch.cat(out, dim=1))

    def _tokens_out(self, seq: torch.Tensor) -> torch.Tensor:
        """Generated tokens in decoding order -> image token order (identity here; Token-Shuffle reorders)."""
        return seq


def _gpt(size):
    n_layer, n_head, dim = GPT_SIZES[size]

    def build(**overrides):
        cfg = dict(n_layer=n_layer, n_head=n_head, dim=dim)
        if size == "tiny":  # CPU minutes: small vocabulary and an 8 x 8 token grid, no dropout but the class one
            cfg.update(vocab_size=1024, block_size=64, num_classes=10, multiple_of=32, token_dropout_p=0.0,
                       resid_dropout_p=0.0, ffn_dropout_p=0.0)
        cfg.update(overrides)
        return LlamaGenGPT(**cfg)
    return build


for _size in GPT_SIZES:
    register(f"llamagen-gpt-{_size}", _gpt(_size))
