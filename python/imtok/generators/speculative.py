"""Grouped speculative decoding (GSD, training-free) and speculative Jacobi decoding (SJD) for the AR models.

One forward pass per iteration verifies a Jacobi draft of L tokens:
  input  = [last accepted token, d_1 .. d_L] at the next L + 1 positions (KV cache holds the accepted prefix);
  target = the (guided) logits of those positions; the draft logits are the ones each d_i was sampled from.
  imtok_cuda.sampling.gsd_verify accepts a left-to-right prefix (cluster test min(1, sum p / sum q) over the
  +-window rank cluster; window 0 = SJD's min(1, p / q)) and resamples norm(max(0, p - q)) at the first
  rejection; when all L are accepted the next token is drawn from the last position's distribution (the
  target's extra row L).
  The KV entries of the accepted drafts are kept (they were computed on the accepted prefix), the rest dropped.
  New drafts (Jacobi): positions after the new token are re-drafted from this pass's distributions at those
  positions, and the slots past the end of the window from the last position's distribution.

Batches stay in lock-step: every row advances by the smallest accepted count k of the batch. A row that
accepted more than k uses its accepted draft at position k as its next token: an accepted draft is an exact
sample of the target distribution there, so the output distribution is unchanged.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .base import sampling_ops

__all__ = ["speculative_generate"]


def _guided(logits, B, cfg_scale, cfg_rows):
    """Combine [cond; uncond] logits [2B, n, V] as uncond + s (cond - uncond) on the positions where cfg_rows
    [n] is True (the conditional logits elsewhere); [B, n, V] logits pass through."""
    if logits.shape[0] == B:
        return logits
    cond, uncond = logits[:B], logits[B:]
    guided = uncond + cfg_scale * (cond - uncond)
    return torch.where(cfg_rows[None, :, None], guided, cond)


@torch.no_grad()
def speculative_generate(model, cond, n_tokens: int, cfg_scale: float = 1.0, cfg_interval: int = -1,
                         temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                         generator: Optional[torch.Generator] = None, draft_len: int = 16, window: int = 7,
                         prob_threshold: float = 0.15, dist_threshold: float = 0.5,
                         code_embedding: Optional[torch.Tensor] = None):
    """Returns (tokens [B, n_tokens], number of forward passes). See the module docstring."""
    if model.tokens_per_step != 1:
        raise NotImplementedError("speculative decoding is implemented for one token per step (Token-Shuffle "
                                  "with shuffle > 1 predicts s^2 tokens per step)")
    if draft_len < 1:
        raise ValueError(f"draft_len must be >= 1, got {draft_len}")
    if window < 0:
        raise ValueError(f"the GSD window must be >= 0, got {window}")
    ops = sampling_ops()
    B, V = cond.shape[0], model.vocab_size
    if code_embedding is None:
        code_embedding = F.normalize(model.tok_embeddings.weight.detach().float(), dim=-1)
    if code_embedding.dim() != 2 or code_embedding.shape[0] != V:
        raise ValueError(f"code_embedding must be [vocab_size = {V}, D], got {tuple(code_embedding.shape)}")
    guided = cfg_scale != 1.0
    cond_in = torch.cat([cond, model._null_like(cond)]) if guided else cond
    rows = cond_in.shape[0]
    cls = model.cls_token_num
    caches = model.setup_caches(rows, cls + n_tokens + draft_len)
    sample_kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    def cfg_on(first_token, n):  # token t gets CFG while t <= cfg_interval + 1 (LlamaGen's counting)
        t = torch.arange(first_token, first_token + n, device=cond.device)
        return torch.full_like(t, guided, dtype=torch.bool) & ((cfg_interval < 0) | (t <= cfg_interval + 1))

    def draw(logits):  # logits [B, n, V] (already guided) -> tokens [B, n]
        return ops.sample_logits(logits.reshape(-1, V), **sample_kw).view(logits.shape[0], -1)

    h = model.cls_embedding(cond_in, train=False)[:, :cls]
    logits = _guided(model.decode_step(h, 0, caches)[:, -1:], B, cfg_scale, cfg_on(0, 1))  # [B, 1, V]
    passes = 1
    out = torch.empty(B, n_tokens, dtype=torch.long, device=cond.device)
    out[:, 0] = draw(logits)[:, 0]
    draft_logits = logits.expand(B, draft_len, V).contiguous()
    drafts = draw(draft_logits)
    n = 1  # tokens decided; out[:, n - 1] is not in the cache yet
    while n < n_tokens:
        L = min(draft_len, n_tokens - n)
        x = torch.cat([out[:, n - 1:n], drafts[:, :L]], dim=1)
        logits = model.decode_step(model.embed_tokens(x.repeat(rows // B, 1)), cls + n - 1, caches)
        passes += 1
        target = _guided(logits, B, cfg_scale, cfg_on(n, L + 1))  # [B, L + 1, V]: target[:, i] for token n + i
        num_acc, resampled = ops.gsd_verify(drafts[:, :L], target, draft_logits[:, :L], code_embedding,
                                            window=window, prob_threshold=prob_threshold,
                                            dist_threshold=dist_threshold, **sample_kw)
        k = int(num_acc.min())
        nxt = torch.where(num_acc > k, drafts[:, min(k, L - 1)], resampled)  # resampled: residual or bonus
        out[:, n:n + k] = drafts[:, :k]
        out[:, n + k] = nxt
        for c in caches:  # keep the last token's and the k accepted drafts' entries
            c.length = cls + n + k
        n += k + 1
        if n >= n_tokens:
            break
        # Jacobi re-draft: positions n, n+1, ... from this pass's distributions at those positions, then the last
        redraft = target[:, k + 1:L + 1]
        pad = target[:, L:L + 1].expand(B, draft_len - redraft.shape[1], V)
        draft_logits = torch.cat([redraft, pad], dim=1).contiguous()
        drafts = draw(draft_logits)
    return out, passes
