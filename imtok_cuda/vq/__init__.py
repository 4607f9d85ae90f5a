"""Vector-quantization ops: nearest code (and top-k), latent perturbation, quantizers."""
from .nearest import latent_perturbation, nearest, nearest_topk  # noqa: F401

# ---- quantizers (FSQ, LFQ/BSQ, binary, quantize + losses, counts, EMA, residual) ---------------------------
from .fsq import fsq, fsq_indices_to_codes, fsq_codebook_size  # noqa: E402,F401
from .lfq import lfq_quantize, lfq_value, lfq_entropy, lfq_per_sample_entropy, lfq_codebook_entropy  # noqa: E402,F401
from .binary import binary_quantize  # noqa: E402,F401
from .ema import code_counts, perplexity, ema_stats, ema_update_  # noqa: E402,F401
from .quantize import quantize, quantize_loss, nearest_indices  # noqa: E402,F401
from .residual import residual_vq  # noqa: E402,F401
