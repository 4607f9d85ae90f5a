"""Building blocks every imtok model shares: attention (fused op / SDPA / reference behind one switch)."""
from .attention import Attention, AttentionSideOutputs, KVCache, attention, self_attention
from .switch import reference_enabled, use_reference

__all__ = ["Attention", "AttentionSideOutputs", "KVCache", "attention", "self_attention", "reference_enabled",
           "use_reference"]
