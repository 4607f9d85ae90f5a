"""Token reduction on the models people run, with imtok_cuda's fused ops underneath:
ToMe, EViT and GTP-ViT patch timm VisionTransformers (apply_* / remove_*), tomesd patches a diffusers UNet or
pipeline, FasterVLM selects a Hugging Face CLIP vision tower's patch features. imtok.use_reference() switches
every one of them to the pure-PyTorch references."""
from .evit import apply_evit, remove_evit
from .fastervlm import FasterVLMOutput, fastervlm
from .gtp import apply_gtp, remove_gtp
from .tome import apply_tome, parse_r, remove_tome
from .tomesd import apply_tomesd, remove_tomesd

__all__ = ["apply_tome", "remove_tome", "parse_r", "apply_tomesd", "remove_tomesd", "apply_evit", "remove_evit",
           "apply_gtp", "remove_gtp", "fastervlm", "FasterVLMOutput"]
