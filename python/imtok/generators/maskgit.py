"""MaskGIT generator in TiTok's token space (bytedance/1d-tokenizer, modeling/maskgit.py).

Token ids: [0, K) the tokenizer's codes, K the mask token, K + 1 + c the class c (c < num_classes), and
K + 1 + num_classes the dropped (null) class. The class token is prepended; logits over the K codes come back
for the image positions only.

Two layouts, as the anchor's `model_type`:
  "ViT"  (ImageBert: TiTok-L-32 / B-64): a BERT encoder (post-LN, word + position + token-type-0 embeddings,
         LayerNorm eps 1e-12, exact GELU, hidden dropout `dropout`; BERT's attention-probability dropout is not
         applied) and lm_head;
  "UViT" (UViTBert: TiTok-S-128): pre-LN blocks without qkv bias, num_layers // 2 in-blocks, a mid block and
         num_layers // 2 out-blocks with long skips (Linear(2 D -> D) on [x, skip]), final LayerNorm, lm_head;
         no dropout (the anchor builds these blocks with none).

Training (training_loss): per sample t ~ U(0, 1), mask ratio acos(t) / (pi / 2) (clamped to [1e-6, 1]),
round(N ratio) (at least 1) random positions masked; the class is dropped with class_label_dropout;
cross-entropy with label smoothing 0.1 over all positions, weight 1 on masked and 0.1 on unmasked tokens,
normalised by the weight sum.

generate(condition, guidance_scale, guidance_decay, guidance_scale_pow, randomize_temperature,
softmax_temperature_annealing, num_sample_steps): the anchor's schedule; one step is one fused
imtok_cuda.sampling.maskgit_step over the [cond; uncond] logits of one batched forward pass.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Attention
from .base import Generator, check_long, register, sampling_ops

__all__ = ["MaskGITGenerator", "remaining_masked", "mask_len_at"]


def mask_len_at(step: int, num_steps: int, num_tokens: int) -> int:
    """floor(N acos(ratio) / (pi / 2)) with ratio = (step + 1) / num_steps, before clamping to [1, masked - 1]."""
    ratio = (step + 1) / num_steps
    return int(math.floor(num_tokens * (math.acos(ratio) / (math.pi * 0.5))))


def remaining_masked(num_tokens: int, num_steps: int):
    """Masked tokens left after each step of generate() (the spec's golden counts)."""
    left, out = num_tokens, []
    for step in range(num_steps):
        left = 0 if step == num_steps - 1 else max(1, min(left - 1, mask_len_at(step, num_steps, num_tokens)))
        out.append(left)
    return out


class _Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _UViTBlock(nn.Module):
    """Pre-LN block of the anchor's UViT (names as modeling/modules/blocks.py: norm1, attn.qkv, attn.proj, norm2,
    mlp.fc1, mlp.fc2, skip_linear)."""

    def __init__(self, dim, num_heads, hidden, skip=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=False, proj_bias=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, hidden)
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _BertLayer(nn.Module):
    """Post-LN BERT layer: x = LN(x + proj(attn(x))); x = LN(x + fc2(gelu(fc1(x))))."""

    def __init__(self, dim, num_heads, hidden, dropout):
        super().__init__()
        self.attn = Attention(dim, num_heads, qkv_bias=True, proj_bias=True)
        self.attn_norm = nn.LayerNorm(dim, eps=1e-12)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=1e-12)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = self.attn_norm(x + self.drop(self.attn(x)))
        return self.mlp_norm(x + self.drop(self.fc2(F.gelu(self.fc1(x)))))


class MaskGITGenerator(Generator):
    """TiTok's MaskGIT generator. Arguments follow the anchor's config (model.generator.* and
    model.vq_model.codebook_size, losses.*)."""

    def __init__(self, codebook_size=4096, image_seq_len=32, condition_num_classes=1000, model_type="ViT",
                 hidden_size=768, num_hidden_layers=24, num_attention_heads=16, intermediate_size=3072,
                 dropout=0.1, class_label_dropout=0.1, label_smoothing=0.1, loss_weight_unmasked_token=0.1):
        super().__init__()
        self._keep_config(codebook_size=codebook_size, image_seq_len=image_seq_len,
                          condition_num_classes=condition_num_classes, model_type=model_type,
                          hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                          num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                          dropout=dropout, class_label_dropout=class_label_dropout, label_smoothing=label_smoothing,
                          loss_weight_unmasked_token=loss_weight_unmasked_token)
        if model_type not in ("ViT", "UViT"):
            raise ValueError(f"model_type must be 'ViT' (BERT) or 'UViT', got {model_type!r}")
        self.codebook_size = codebook_size
        self.mask_token_id = codebook_size
        self.num_classes = condition_num_classes
        self.null_class_id = codebook_size + 1 + condition_num_classes
        self.image_seq_len = image_seq_len
        self.model_type = model_type
        self.class_label_dropout = class_label_dropout
        self.label_smoothing = label_smoothing
        self.loss_weight_unmasked_token = loss_weight_unmasked_token
        vocab = codebook_size + condition_num_classes + 2
        D, H, F_ = hidden_size, num_attention_heads, intermediate_size
        self.embeddings = nn.Embedding(vocab, D)
        self.pos_embed = nn.Parameter(torch.zeros(1, image_seq_len + 1, D))
        if model_type == "ViT":
            self.token_type_embed = nn.Parameter(torch.zeros(D))
            self.embed_norm = nn.LayerNorm(D, eps=1e-12)
            self.embed_drop = nn.Dropout(dropout)
            self.layers = nn.ModuleList([_BertLayer(D, H, F_, dropout) for _ in range(num_hidden_layers)])
        else:  # the anchor builds its UViT blocks without dropout
            self.in_blocks = nn.ModuleList([_UViTBlock(D, H, F_) for _ in range(num_hidden_layers // 2)])
            self.mid_block = _UViTBlock(D, H, F_)
            self.out_blocks = nn.ModuleList([_UViTBlock(D, H, F_, skip=True) for _ in range(num_hidden_layers // 2)])
            self.norm = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, codebook_size)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    # ---- model ---------------------------------------------------------------------------------------------
    def class_tokens(self, condition: torch.Tensor, drop: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class ids [B] -> token ids K + 1 + c, or the null class where drop [B] is True."""
        tok = condition + self.codebook_size + 1
        if drop is not None:
            tok = torch.where(drop, torch.full_like(tok, self.null_class_id), tok)
        return tok

    def logits(self, input_ids: torch.Tensor, class_token_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, N] (codes or the mask id), class_token_ids [B] (already in token space) -> [B, N, K]."""
        ids = torch.cat([class_token_ids.view(-1, 1), input_ids], dim=1)
        x = self.embeddings(ids) + self.pos_embed[:, :ids.shape[1]]
        if self.model_type == "ViT":
            x = self.embed_drop(self.embed_norm(x + self.token_type_embed))
            for layer in self.layers:
                x = layer(x)
        else:
            skips = []
            for blk in self.in_blocks:
                x = blk(x)
                skips.append(x)
            x = self.mid_block(x)
            for blk in self.out_blocks:
                x = blk(x, skips.pop())
            x = self.norm(x)
        return self.lm_head(x[:, 1:])

    def _check(self, input_ids, condition):
        check_long("input_ids", input_ids, 2, 0, self.codebook_size + 1)
        check_long("condition", condition, 1, 0, self.num_classes)
        if input_ids.shape[0] != condition.shape[0] or input_ids.shape[1] != self.image_seq_len:
            raise ValueError(f"input_ids must be [B, image_seq_len = {self.image_seq_len}] with B = len(condition) "
                             f"= {condition.shape[0]}, got {tuple(input_ids.shape)}")

    def forward(self, input_ids: torch.Tensor, condition: torch.Tensor, cond_drop_prob: float = 0.1):
        """The anchor's forward: input_ids [B, N], class ids condition [B] in [0, num_classes), each class
        dropped to the null class with probability cond_drop_prob. Returns logits [B, N, codebook_size]."""
        self._check(input_ids, condition)
        drop = torch.rand(condition.shape, device=condition.device) < cond_drop_prob
        return self.logits(input_ids, self.class_tokens(condition, drop))

    def masking_input_tokens(self, input_tokens: torch.Tensor, generator: Optional[torch.Generator] = None):
        """The anchor's training masks: returns (masked_tokens, masks [B, N] bool, True = masked)."""
        B, N = input_tokens.shape
        dev = input_tokens.device
        t = torch.rand(B, device=dev, generator=generator)
        ratio = torch.clamp(torch.acos(t) / (math.pi * 0.5), min=1e-6, max=1.0)
        num_masked = (N * ratio).round().clamp(min=1)
        order = torch.rand(B, N, device=dev, generator=generator).argsort(dim=-1)
        masks = order < num_masked[:, None]
        return torch.where(masks, torch.full_like(input_tokens, self.mask_token_id), input_tokens), masks

    def mlm_loss(self, logits: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor):
        """Label-smoothed cross-entropy weighted 1 on masked, loss_weight_unmasked_token on unmasked tokens."""
        loss = F.cross_entropy(logits.transpose(1, 2), targets, label_smoothing=self.label_smoothing,
                               reduction="none")
        w = masks.to(loss.dtype)
        w = (1.0 - w) * self.loss_weight_unmasked_token + w
        return (loss * w).sum() / (w.sum() + 1e-8)

    def training_loss(self, tokens: torch.Tensor, condition: torch.Tensor,
                      generator: Optional[torch.Generator] = None):
        """One training step's loss: tokens [B, N] codes, condition [B] class ids.
        Returns (loss, {"loss", "correct_tokens"}) (correct_tokens: argmax accuracy on the masked tokens)."""
        check_long("tokens", tokens, 2, 0, self.codebook_size)
        self._check(tokens, condition)
        masked, masks = self.masking_input_tokens(tokens, generator)
        drop = torch.rand(condition.shape, device=condition.device, generator=generator) < self.class_label_dropout
        logits = self.logits(masked, self.class_tokens(condition, drop))
        loss = self.mlm_loss(logits, tokens, masks)
        w = masks.float()
        correct = (((logits.argmax(-1) == tokens).float() * w).sum(1) / (w.sum(1) + 1e-8)).mean()
        return loss, {"loss": loss.detach(), "correct_tokens": correct}

    # ---- sampling ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, condition: torch.Tensor, guidance_scale: float = 3.0, guidance_decay: str = "constant",
                 guidance_scale_pow: float = 3.0, randomize_temperature: float = 4.5,
                 softmax_temperature_annealing: bool = False, num_sample_steps: int = 8,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Class-conditional sampling with the anchor's arguments; returns codes [B, image_seq_len].

        guidance_decay: "constant" (cond + (cond - uncond) g), "linear" (no guidance at step 0, then
        g * ratio of the previous step, same form) or "power-cosine" (uncond + (cond - uncond) g_s with
        g_s = (g - 1)(1 - cos((s / S)^pow pi)) / 2 + 1). randomize_temperature t: Gumbel noise of scale
        t (1 - ratio) on the logits (sampling) and on the confidences (re-masking). Differences from the
        anchor: mask_len is clamped per row (the anchor uses row 0's masked count for the whole batch;
        identical whenever rows have the same count, which generate keeps), and cond / uncond run as one batch."""
        check_long("condition", condition, 1, 0, self.num_classes)
        if guidance_decay not in ("constant", "linear", "power-cosine"):
            raise ValueError(f"Unsupported guidance decay {guidance_decay}")
        if num_sample_steps < 1:
            raise ValueError(f"num_sample_steps must be >= 1, got {num_sample_steps}")
        ops = sampling_ops()
        B, N = condition.shape[0], self.image_seq_len
        ids = torch.full((B, N), self.mask_token_id, dtype=torch.long, device=condition.device)
        cond_tok = self.class_tokens(condition)
        null_tok = torch.full_like(cond_tok, self.null_class_id)
        cfg_scale = guidance_scale if guidance_decay == "constant" else 0.0
        for step in range(num_sample_steps):
            ratio = (step + 1) / num_sample_steps
            if guidance_decay == "power-cosine":
                cfg_scale = (guidance_scale - 1) * (1 - math.cos(((step / num_sample_steps) ** guidance_scale_pow)
                                                                 * math.pi)) / 2 + 1
            if cfg_scale != 0:
                both = self.logits(torch.cat([ids, ids]), torch.cat([cond_tok, null_tok]))
                logits, uncond = both[:B], both[B:]
            else:
                logits, uncond = self.logits(ids, cond_tok), None
            masked = (ids == self.mask_token_id).sum(-1)
            mask_len = torch.clamp(torch.minimum(masked - 1, torch.full_like(masked, mask_len_at(step, num_sample_steps, N))),
                                   min=1)
            sampled, next_ids, _ = ops.maskgit_step(
                logits, ids, self.mask_token_id, mask_len, uncond_logits=uncond, guidance_scale=cfg_scale,
                cfg_form="mdt" if guidance_decay == "power-cosine" else "muse",
                softmax_temperature=0.5 + 0.8 * (1 - ratio) if softmax_temperature_annealing else 1.0,
                randomize_temperature=randomize_temperature * (1.0 - ratio), generator=generator)
            ids = sampled if step == num_sample_steps - 1 else next_ids
            if guidance_decay == "linear":
                cfg_scale = ratio * guidance_scale
        return ids


def _maskgit(**preset):
    def build(**overrides):
        return MaskGITGenerator(**{**preset, **overrides})
    return build


# the anchor's generators (configs/infer/TiTok/*.yaml) and a CPU-scale one
register("maskgit-titok-s128", _maskgit(model_type="UViT", image_seq_len=128, hidden_size=1024,
                                        num_hidden_layers=20, num_attention_heads=16, intermediate_size=4096))
register("maskgit-titok-b64", _maskgit(model_type="ViT", image_seq_len=64, hidden_size=768, num_hidden_layers=24,
                                       num_attention_heads=16, intermediate_size=3072))
register("maskgit-titok-l32", _maskgit(model_type="ViT", image_seq_len=32, hidden_size=768, num_hidden_layers=24,
                                       num_attention_heads=16, intermediate_size=3072))
register("maskgit-tiny", _maskgit(model_type="UViT", codebook_size=1024, image_seq_len=32, condition_num_classes=10,
                                  hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                                  dropout=0.0))
