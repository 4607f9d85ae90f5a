"""Sampling ops for generators: fused AR filtering + sampling, the fused MaskGIT step, GSD verification.

Each op has the signature and semantics of its reference in ``imtok_cuda.reference.sampling`` (read that module
for the exact conventions), a CPU kernel and a CUDA kernel:

    sample_logits(logits, uncond_logits, cfg_scale, temperature, top_k, top_p)   -> LongTensor [B]
        CFG + temperature + top-k (ties kept) + top-p (first token past p kept) + multinomial, one row per
        block / task: the k-th value and the top-p cut-off are found by selection (radix search), no sort.
    maskgit_step(logits, tokens, mask_token_id, mask_len, ...)                  -> (sampled, next_tokens, remask)
        TiTok's step over [B, N, V]: CFG (muse / mdt), softmax temperature, Gumbel-max sampling, confidence,
        the mask_len-th smallest confidence by selection, the re-mask written out.
    gsd_verify(draft_tokens, target_logits, draft_logits, embedding, ...)      -> (num_accepted, next_token)
        Grouped speculative decoding: rank window, probability and embedding filters on the fly, left-to-right
        acceptance, residual resampling.

Randomness: the kernels draw from Philox-4x32-10 keyed by a 62-bit seed that the wrapper draws from
``generator`` (torch's default CPU generator when None), so the CPU kernel and the CUDA kernel draw the same
numbers for the same generator state (bit-identical samples between the CPU kernel and the emulated CUDA
kernel; a real GPU's expf / logf may differ in the last ulp, which can change a sample only at an exact near-tie).
Categorical draws are Gumbel-max over the kept tokens, so the sample depends on no summation order; top-p sums
32.32 fixed-point softmax masses, so its cut-off is the same in every implementation.

torch.compile: the wrappers draw the seed with ``.item()`` (a graph break); in a ``fullgraph=True`` region call
``torch.ops.imtok_cuda.sampling_*`` with an explicit ``seed`` (their fake kernels are registered).
"""
import math

import torch

from . import _loader  # noqa: F401  (loads the extension)
from ._register import register_fake

__all__ = ["sample_logits", "maskgit_step", "gsd_verify", "draw_seed"]

_ops = torch.ops.imtok_cuda
_MAX_WINDOW = _loader.LIMITS["max_draft_window"]
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_LOGIT_DTYPES = "float16, bfloat16 or float32"


def draw_seed(generator=None, device="cpu"):
    """A 62-bit Philox key drawn from ``generator`` (advancing it), or from torch's default CPU generator."""
    if generator is None:
        return int(torch.randint(0, 2 ** 62, (), dtype=torch.long).item())
    return int(torch.randint(0, 2 ** 62, (), dtype=torch.long, generator=generator, device=generator.device).item())


# ---------------------------------------------------------------------------------------------------------------
# argument checks (the C++ entry points and the fake kernels check the same things)
# ---------------------------------------------------------------------------------------------------------------
def _check_tensor(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError("%s must be a tensor, got %s" % (name, type(t).__name__))


def _check_logits(t, name, dim):
    _check_tensor(t, name)
    if t.dtype not in _FLOATS:
        raise TypeError("%s must be %s, got %s" % (name, _LOGIT_DTYPES, t.dtype))
    if t.dim() != dim:
        raise ValueError("%s must have %d dimensions, got shape %s" % (name, dim, tuple(t.shape)))
    if t.shape[-1] < 1:
        raise ValueError("%s must have a vocabulary of at least one token (shape[-1] >= 1), got shape %s"
                         % (name, tuple(t.shape)))


def _check_like(t, name, ref, ref_name):
    _check_tensor(t, name)
    if t.dtype not in _FLOATS:
        raise TypeError("%s must be %s, got %s" % (name, _LOGIT_DTYPES, t.dtype))
    if tuple(t.shape) != tuple(ref.shape):
        raise ValueError("%s must have the shape of %s %s, got %s" % (name, ref_name, tuple(ref.shape),
                                                                     tuple(t.shape)))
    if t.device != ref.device:
        raise ValueError("%s and %s must be on the same device, got %s and %s" % (ref_name, name, ref.device,
                                                                                 t.device))


def _check_long(t, name, shape, device):
    _check_tensor(t, name)
    if t.dtype != torch.long:
        raise TypeError("%s must be int64 (torch.long), got %s" % (name, t.dtype))
    if tuple(t.shape) != tuple(shape):
        raise ValueError("%s must have shape %s, got %s" % (name, tuple(shape), tuple(t.shape)))
    if t.device != device:
        raise ValueError("%s must be on %s (the logits' device), got %s" % (name, device, t.device))


def _check_real(v, name, lo=None, lo_open=False, hi=None, hi_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError("%s must be a number, got %s" % (name, type(v).__name__))
    v = float(v)
    if not math.isfinite(v):
        raise ValueError("%s must be finite, got %r" % (name, v))
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError("%s must be %s %g, got %r" % (name, ">" if lo_open else ">=", lo, v))
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ValueError("%s must be %s %g, got %r" % (name, "<" if hi_open else "<=", hi, v))
    return v


def _check_int(v, name, lo=None, hi=None):
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError("%s must be an int, got %s" % (name, type(v).__name__))
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError("%s must be in [%s, %s], got %d" % (name, lo, hi, v))
    return v


def _check_filters(temperature, top_k, top_p, V):
    """The checks of csrc/sampling/sampling_checks.h, with the same messages."""
    temperature = _check_real(temperature, "temperature", lo=0.0)
    top_k = _check_int(top_k, "top_k")
    if not 0 <= top_k <= V:
        raise ValueError("top_k must be in [0, V] = [0, %d], got %d" % (V, top_k))
    top_p = _check_real(top_p, "top_p")
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1], got %r" % (top_p,))
    return temperature, top_k, top_p


# ---------------------------------------------------------------------------------------------------------------
# sample_logits
# ---------------------------------------------------------------------------------------------------------------
def sample_logits(logits, uncond_logits=None, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """Fused AR sampling over logits [B, V] (float16 / bfloat16 / float32, computed in float32).

    l = uncond + cfg_scale * (cond - uncond) when uncond_logits is given (LlamaGen), then l / temperature;
    temperature 0 = greedy argmax (lowest index on ties). top_k > 0 keeps l >= the k-th largest value (ties kept);
    top_p < 1 keeps, in descending order, the tokens whose preceding probability mass is < top_p (the first token
    past p is kept). Returns the sampled ids, LongTensor [B]."""
    _check_logits(logits, "logits", 2)
    if uncond_logits is not None:
        _check_like(uncond_logits, "uncond_logits", logits, "logits")
    cfg_scale = _check_real(cfg_scale, "cfg_scale")
    temperature, top_k, top_p = _check_filters(temperature, top_k, top_p, logits.shape[1])
    seed = draw_seed(generator) if temperature != 0 else 0
    return _ops.sampling_sample_logits(logits, uncond_logits, cfg_scale, temperature, top_k, top_p, seed)


def _fake_check_sample(logits, uncond_logits, temperature, top_k, top_p):
    _check_logits(logits, "logits", 2)
    if uncond_logits is not None:
        _check_like(uncond_logits, "uncond_logits", logits, "logits")
    _check_filters(temperature, top_k, top_p, logits.shape[1])


@register_fake("sampling_sample_logits")
def _sample_fake(logits, uncond_logits=None, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, seed=0):
    _fake_check_sample(logits, uncond_logits, temperature, top_k, top_p)
    _check_real(cfg_scale, "cfg_scale")
    return logits.new_empty(logits.shape[0], dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------
# maskgit_step
# ---------------------------------------------------------------------------------------------------------------
def _mask_len_tensor(mask_len, B, N, device):
    if isinstance(mask_len, torch.Tensor):
        if mask_len.dtype != torch.long:
            raise TypeError("mask_len must be an int or an int64 tensor [B], got %s" % (mask_len.dtype,))
        if mask_len.dim() == 0:
            mask_len = mask_len.reshape(1).expand(B)
        if tuple(mask_len.shape) != (B,):
            raise ValueError("mask_len must be an int or a tensor of shape [B] = [%d], got shape %s"
                             % (B, tuple(mask_len.shape)))
        if mask_len.device != device:
            raise ValueError("mask_len must be on %s (the logits' device), got %s" % (device, mask_len.device))
        if mask_len.device.type == "cpu" and mask_len.numel() and (int(mask_len.min()) < 0 or int(mask_len.max()) > N):
            raise ValueError("mask_len values must be in [0, N] = [0, %d], got %s" % (N, mask_len.tolist()))
        return mask_len.contiguous()
    _check_int(mask_len, "mask_len", 0, N)
    return torch.full((B,), mask_len, dtype=torch.long, device=device)


def maskgit_step(logits, tokens, mask_token_id, mask_len, uncond_logits=None, guidance_scale=0.0, cfg_form="muse",
                 softmax_temperature=1.0, randomize_temperature=0.0, generator=None):
    """One fused MaskGIT decoding step (TiTok's generate loop body) over logits [B, N, V].

    tokens [B, N] int64 holds mask_token_id at unknown positions; mask_len: int or LongTensor [B] in [0, N].
    CFG when uncond_logits is given: "muse" cond + (cond - uncond) * g, "mdt" uncond + (cond - uncond) * g; then
    / softmax_temperature. sampled = argmax(l + t * gumbel) at masked positions (t = randomize_temperature), the
    known token elsewhere; confidence = l[sampled] + t * fresh gumbel (+inf where known); remask = confidence <=
    the mask_len-th smallest confidence of its row; next_tokens = where(remask, mask_token_id, sampled).
    Returns (sampled, next_tokens, remask)."""
    _check_logits(logits, "logits", 3)
    B, N, V = logits.shape
    _check_long(tokens, "tokens", (B, N), logits.device)
    _check_int(mask_token_id, "mask_token_id")
    if uncond_logits is not None:
        _check_like(uncond_logits, "uncond_logits", logits, "logits")
    guidance_scale = _check_real(guidance_scale, "guidance_scale")
    if cfg_form not in ("muse", "mdt"):
        raise ValueError("cfg_form must be 'muse' or 'mdt', got %r" % (cfg_form,))
    softmax_temperature = _check_real(softmax_temperature, "softmax_temperature", lo=0.0, lo_open=True)
    randomize_temperature = _check_real(randomize_temperature, "randomize_temperature", lo=0.0)
    ml = _mask_len_tensor(mask_len, B, N, logits.device)
    seed = draw_seed(generator) if randomize_temperature != 0 else 0
    return _ops.sampling_maskgit_step(logits, tokens, mask_token_id, ml, uncond_logits, guidance_scale, cfg_form,
                                      softmax_temperature, randomize_temperature, seed)


@register_fake("sampling_maskgit_step")
def _maskgit_fake(logits, tokens, mask_token_id, mask_len, uncond_logits=None, guidance_scale=0.0, cfg_form="muse",
                  softmax_temperature=1.0, randomize_temperature=0.0, seed=0):
    _check_logits(logits, "logits", 3)
    B, N, V = logits.shape
    _check_long(tokens, "tokens", (B, N), logits.device)
    _check_long(mask_len, "mask_len", (B,), logits.device)
    if uncond_logits is not None:
        _check_like(uncond_logits, "uncond_logits", logits, "logits")
    _check_real(guidance_scale, "guidance_scale")
    if cfg_form not in ("muse", "mdt"):
        raise ValueError("cfg_form must be 'muse' or 'mdt', got %r" % (cfg_form,))
    _check_real(softmax_temperature, "softmax_temperature", lo=0.0, lo_open=True)
    _check_real(randomize_temperature, "randomize_temperature", lo=0.0)
    return (tokens.new_empty(B, N), tokens.new_empty(B, N), tokens.new_empty(B, N, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------------------
# gsd_verify
# ---------------------------------------------------------------------------------------------------------------
def _check_gsd(draft_tokens, target_logits, draft_logits, embedding, window, prob_threshold, dist_threshold,
               temperature, top_k, top_p):
    _check_logits(target_logits, "target_logits", 3)
    _check_logits(draft_logits, "draft_logits", 3)
    _check_tensor(draft_tokens, "draft_tokens")
    if draft_tokens.dtype != torch.long:
        raise TypeError("draft_tokens must be int64 (torch.long), got %s" % (draft_tokens.dtype,))
    if draft_tokens.dim() != 2:
        raise ValueError("draft_tokens must have 2 dimensions [B, L], got shape %s" % (tuple(draft_tokens.shape),))
    B, L = draft_tokens.shape
    V = target_logits.shape[2]
    if tuple(draft_logits.shape) != (B, L, V):
        raise ValueError("draft_logits must have shape [B, L, V] = %s, got %s" % ((B, L, V), tuple(draft_logits.shape)))
    if target_logits.shape[0] != B or target_logits.shape[1] not in (L, L + 1):
        raise ValueError("target_logits must have shape [B, L, V] or [B, L + 1, V] with B, L = %s, got %s"
                         % ((B, L), tuple(target_logits.shape)))
    _check_tensor(embedding, "embedding")
    if embedding.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError("embedding must be a floating tensor, got %s" % (embedding.dtype,))
    if embedding.dim() != 2 or embedding.shape[0] != V:
        raise ValueError("embedding must have shape [V, D] with V = %d, got %s" % (V, tuple(embedding.shape)))
    for t, n in ((draft_tokens, "draft_tokens"), (draft_logits, "draft_logits"), (embedding, "embedding")):
        if t.device != target_logits.device:
            raise ValueError("%s must be on %s (target_logits' device), got %s" % (n, target_logits.device, t.device))
    _check_int(window, "window", 0, _MAX_WINDOW)
    _check_real(prob_threshold, "prob_threshold", lo=0.0)
    _check_real(dist_threshold, "dist_threshold", lo=0.0)
    _check_filters(temperature, top_k, top_p, V)


def gsd_verify(draft_tokens, target_logits, draft_logits, embedding, window=7, prob_threshold=0.15,
               dist_threshold=0.5, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """Grouped speculative decoding verification of a Jacobi draft window (see the reference for the full rule).

    draft_tokens [B, L] int64; target_logits [B, L, V] or [B, L + 1, V] (target distribution p per draft position,
    plus optionally the next position); draft_logits [B, L, V] (the distribution q each draft token was drawn
    from); embedding [V, D]. Clusters: the tokens within +-window ranks of x in p, kept if |p(y) - p(x)| <
    prob_threshold and ||E[y] - E[x]||^2 < dist_threshold (no V x V matrix). Accept iff u < sum_C p / sum_C q,
    left to right. Returns (num_accepted [B], next_token [B]): the residual sample norm(max(0, p - q)) at the first
    rejection; when all are accepted a sample from the extra target row, or -1 without one.
    window = 0 is speculative Jacobi decoding."""
    _check_gsd(draft_tokens, target_logits, draft_logits, embedding, window, prob_threshold, dist_threshold,
               temperature, top_k, top_p)
    if draft_tokens.device.type == "cpu" and draft_tokens.numel():
        V = target_logits.shape[2]
        lo, hi = int(draft_tokens.min()), int(draft_tokens.max())
        if lo < 0 or hi >= V:
            raise ValueError("draft_tokens values must be in [0, V) = [0, %d), got %d" % (V, lo if lo < 0 else hi))
    seed = draw_seed(generator)
    return _ops.sampling_gsd_verify(draft_tokens, target_logits, draft_logits, embedding, int(window),
                                    float(prob_threshold), float(dist_threshold), float(temperature), int(top_k),
                                    float(top_p), seed)


@register_fake("sampling_gsd_verify")
def _gsd_fake(draft_tokens, target_logits, draft_logits, embedding, window=7, prob_threshold=0.15,
              dist_threshold=0.5, temperature=1.0, top_k=0, top_p=1.0, seed=0):
    _check_gsd(draft_tokens, target_logits, draft_logits, embedding, window, prob_threshold, dist_threshold,
               temperature, top_k, top_p)
    B = draft_tokens.shape[0]
    return draft_tokens.new_empty(B), draft_tokens.new_empty(B)

