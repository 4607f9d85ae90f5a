"""Sampling references: AR filtering + multinomial (LlamaGen), the MaskGIT step (TiTok), GSD verification.

Pure PyTorch, importing nothing from csrc: the readable specification that the fused kernels are tested against.
Randomness comes from torch's RNG (``generator``); the fused ops draw from a Philox counter-based generator
instead, so the two agree exactly only where sampling is deterministic (temperature 0, top_k 1, MaskGIT with
randomize_temperature 0) and in distribution elsewhere.

Conventions (read from the anchors' code):

- AR (LlamaGen ``sample`` / ``top_k_top_p_filtering``): l = uncond + cfg_scale * (cond - uncond), then
  l / temperature; top_k keeps l >= the k-th largest value (ties at the k-th value are kept); top_p: over the kept
  tokens sorted by descending probability (equal values in ascending index order), a token is kept when the
  probability mass strictly before it is < top_p, so the first token past p is kept and at least one token always
  is (LlamaGen's shifted ``cumsum > top_p`` keeps a token whose preceding mass equals top_p exactly; this rule
  drops it: the two differ only at exact equality); then a multinomial draw from the softmax of the kept logits. temperature == 0 is greedy argmax (lowest index
  on ties). Everything is computed in float32 whatever the logits' dtype.
- MaskGIT (TiTok ``modeling/maskgit.py`` ``ImageBert.generate``, bytedance/1d-tokenizer): CFG "muse" is
  cond + (cond - uncond) * g, "mdt" is uncond + (cond - uncond) * g; then logits / softmax_temperature;
  gumbel = -log(-log(u)) with both logs clamped at 1e-20, u ~ U[0, 1); sampled = argmax(logits + t * gumbel)
  at masked positions, the known token elsewhere; confidence = the sampled token's logit (after the temperature
  division, as TiTok gathers it from the divided logits) + t * fresh gumbel, +inf at known positions;
  remask = confidence <= the mask_len-th smallest confidence of the row (all ties at the cut-off are re-masked,
  and known positions too when the cut-off is +inf, exactly as TiTok's sort + compare does). mask_len may differ
  per row; mask_len == 0 re-masks nothing. TiTok clamps mask_len to [1, masked - 1] before the call.
- GSD (grouped speculative decoding, training-free): see ``gsd_verify``.
"""
import math

import torch

__all__ = ["cfg_combine", "process_logits", "filter_logits", "sample_logits", "gumbel_noise", "maskgit_step",
           "gsd_distributions", "gsd_cluster", "gsd_verify"]


def cfg_combine(cond, uncond, scale, form="llamagen"):
    """float32 CFG combine. "llamagen" / "mdt": uncond + (cond - uncond) * scale; "muse": cond + (cond - uncond) * scale."""
    c = cond.float()
    if uncond is None:
        return c
    u = uncond.float()
    if form == "muse":
        return c + (c - u) * scale
    return u + (c - u) * scale


def process_logits(logits, uncond_logits=None, cfg_scale=1.0, temperature=1.0):
    """CFG (LlamaGen form) then / temperature (skipped for temperature 0: greedy), float32."""
    l = cfg_combine(logits, uncond_logits, cfg_scale)
    if temperature != 0:
        l = l / temperature
    return l


def filter_logits(l, top_k=0, top_p=1.0):
    """l [..., V] float32 -> l with the filtered-out tokens set to -inf (top-k, then top-p over what is left)."""
    V = l.shape[-1]
    if top_k > 0 and top_k < V:
        kth = torch.topk(l, top_k, dim=-1).values[..., -1:]
        l = l.masked_fill(l < kth, float("-inf"))
    if top_p < 1.0:
        sorted_l, order = torch.sort(l, dim=-1, descending=True, stable=True)
        probs = torch.softmax(sorted_l, dim=-1)
        cum = torch.cumsum(probs, dim=-1)
        before = torch.cat([torch.zeros_like(cum[..., :1]), cum[..., :-1]], dim=-1)
        remove_sorted = before >= top_p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        l = l.masked_fill(remove, float("-inf"))
    return l


def sample_logits(logits, uncond_logits=None, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """logits [B, V] (uncond_logits the same shape or None) -> sampled token ids LongTensor [B]."""
    l = process_logits(logits, uncond_logits, cfg_scale, temperature)
    if temperature == 0:
        return l.argmax(dim=-1)
    l = filter_logits(l, top_k, top_p)
    if l.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=l.device)
    probs = torch.softmax(l, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def gumbel_noise(t, generator=None):
    """TiTok's gumbel: -log(-log(u)), u ~ U[0, 1), both logs clamped at 1e-20."""
    u = torch.zeros_like(t).uniform_(0, 1, generator=generator)
    return -torch.log(torch.clamp(-torch.log(torch.clamp(u, min=1e-20)), min=1e-20))


def _mask_len_tensor(mask_len, B, device):
    if isinstance(mask_len, torch.Tensor):
        return mask_len.to(device=device, dtype=torch.long).reshape(-1).expand(B) if mask_len.numel() == 1 \
            else mask_len.to(device=device, dtype=torch.long)
    return torch.full((B,), int(mask_len), dtype=torch.long, device=device)


def maskgit_step(logits, tokens, mask_token_id, mask_len, uncond_logits=None, guidance_scale=0.0, cfg_form="muse",
                 softmax_temperature=1.0, randomize_temperature=0.0, generator=None):
    """One MaskGIT decoding step (TiTok). logits [B, N, V], tokens [B, N] (mask_token_id where unknown),
    mask_len int or LongTensor [B]. Returns (sampled [B, N] long, next_tokens [B, N] long, remask [B, N] bool)."""
    form = "muse" if cfg_form == "muse" else "mdt"
    l = cfg_combine(logits, uncond_logits, guidance_scale, form)
    l = l / softmax_temperature
    t = float(randomize_temperature)
    B, N, V = l.shape
    is_mask = tokens == mask_token_id
    sampled = (l + t * gumbel_noise(l, generator)).argmax(dim=-1) if V > 0 else torch.zeros_like(tokens)
    sampled_logits = torch.gather(l, -1, sampled.unsqueeze(-1)).squeeze(-1)
    sampled = torch.where(is_mask, sampled, tokens)
    sampled_logits = torch.where(is_mask, sampled_logits, torch.full_like(sampled_logits, math.inf))
    confidence = sampled_logits + t * gumbel_noise(sampled_logits, generator)
    ml = _mask_len_tensor(mask_len, B, l.device)
    if N == 0:
        remask = torch.zeros(B, 0, dtype=torch.bool, device=l.device)
    else:
        sorted_conf = torch.sort(confidence, dim=-1).values
        cut_off = torch.gather(sorted_conf, -1, (ml - 1).clamp(min=0).unsqueeze(-1))
        remask = (confidence <= cut_off) & (ml > 0).unsqueeze(-1)
    next_tokens = torch.where(remask, torch.full_like(sampled, mask_token_id), sampled)
    return sampled, next_tokens, remask


# ---------------------------------------------------------------------------------------------------------------
# Grouped speculative decoding
# ---------------------------------------------------------------------------------------------------------------
def gsd_distributions(logits, temperature=1.0, top_k=0, top_p=1.0):
    """The sampling distribution of logits [..., V] and the ranking logits: (probs float32, ranked) where ranked is
    the processed logit of kept tokens and -inf for filtered ones. temperature 0: one-hot at the argmax."""
    l = logits.float()
    if temperature == 0:
        idx = l.argmax(dim=-1, keepdim=True)
        probs = torch.zeros_like(l).scatter(-1, idx, 1.0)
        ranked = torch.where(probs > 0, l, torch.full_like(l, -math.inf))
        return probs, ranked
    l = filter_logits(l / temperature, top_k, top_p)
    return torch.softmax(l, dim=-1), l


def gsd_cluster(p, ranked, x, embedding, window=7, prob_threshold=0.15, dist_threshold=0.5):
    """Boolean cluster [V] of draft token x in one target distribution p [V]: the tokens within +-window ranks of
    x (rank = position in the descending order of the processed target logits, filtered tokens last, equal values
    by ascending index), kept if |p(y) - p(x)| < prob_threshold and ||E[y] - E[x]||^2 < dist_threshold; x itself
    is always in its cluster."""
    V = p.shape[-1]
    order = torch.sort(ranked, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(V, device=p.device)
    rx = rank[x]
    near = (rank - rx).abs() <= window
    E = embedding.float()
    d2 = ((E - E[x]) ** 2).sum(-1)
    keep = near & ((p - p[x]).abs() < prob_threshold) & (d2 < dist_threshold)
    keep[x] = True
    return keep


def gsd_verify(draft_tokens, target_logits, draft_logits, embedding, window=7, prob_threshold=0.15,
               dist_threshold=0.5, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """Grouped speculative decoding: verify a Jacobi draft window left to right.

    draft_tokens [B, L]; target_logits [B, L, V] or [B, L + 1, V]: row i is the target distribution p_i of draft
    position i (the extra row, when given, is the distribution of the token after the window); draft_logits
    [B, L, V]: row i gave the distribution q_i the draft token was drawn from; embedding [V, D]. p and q are the
    sampling distributions of the logits (temperature, top_k, top_p as in sample_logits; temperature 0 = one-hot
    at the argmax). For draft token x at position i with cluster C (``gsd_cluster``): accept iff
    u * sum_C q_i < sum_C p_i, u ~ U[0, 1) (that is u < min(1, sum_C p / sum_C q)). Positions are verified left to
    right; the first rejection stops. window = 0 is speculative Jacobi decoding (accept iff u < p(x) / q(x)).

    Returns (num_accepted [B] long in [0, L], next_token [B] long): at the first rejected position i, a sample from
    norm(max(0, p_i - q_i)) (from p_i if that is all zero); when all L are accepted, a sample from the extra target
    row if target_logits has L + 1 rows, else -1.
    """
    B, L = draft_tokens.shape
    dev = target_logits.device
    p_all, ranked_all = gsd_distributions(target_logits, temperature, top_k, top_p)
    q_all, _ = gsd_distributions(draft_logits, temperature, top_k, top_p)
    u = torch.rand(B, L, generator=generator, device=dev) if L > 0 else torch.empty(B, 0, device=dev)
    num_acc = torch.zeros(B, dtype=torch.long, device=dev)
    next_tok = torch.full((B,), -1, dtype=torch.long, device=dev)
    for b in range(B):
        n = 0
        rejected = False
        for i in range(L):
            x = int(draft_tokens[b, i])
            p, q = p_all[b, i], q_all[b, i]
            c = gsd_cluster(p, ranked_all[b, i], x, embedding, window, prob_threshold, dist_threshold)
            P, Q = p[c].sum(), q[c].sum()
            if u[b, i] * Q < P:
                n += 1
                continue
            rejected = True
            r = torch.clamp(p - q, min=0)
            if not bool(r.sum() > 0):
                r = p
            next_tok[b] = torch.multinomial(r / r.sum(), 1, generator=generator)[0]
            break
        num_acc[b] = n
        if not rejected and target_logits.shape[1] == L + 1:
            next_tok[b] = torch.multinomial(p_all[b, L], 1, generator=generator)[0]
    return num_acc, next_tok
