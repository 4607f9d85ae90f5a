"""Token reduction applied to a plain ViT (imtok.models.vit or any timm-named ViT with the same block layout)."""
from .evit import apply_evit  # noqa: F401
from .gtp import apply_gtp  # noqa: F401
from .tome import apply_tome  # noqa: F401
from .tomesd import apply_tomesd  # noqa: F401
