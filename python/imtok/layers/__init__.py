"""Building blocks every imtok model shares: attention (fused op / SDPA / reference behind one switch)."""
from .attention import Attention, KVCache, attention
from .switch import reference_enabled, use_reference

__all__ = ["Attention", "KVCache", "attention", "reference_enabled", "use_reference"]
