"""What every token-reduction patch shares: class swapping that `remove_*` undoes exactly, the timm-style
block layout, and the choice between the fused ops and their references (imtok.use_reference())."""
from torch import nn

from imtok.layers.switch import reference_enabled

_CLASSES = {}


def ops(fused_module, reference_module):
    """The op module to call now: the reference inside imtok.use_reference(), else the fused one."""
    return reference_module if reference_enabled() else fused_module


def original_class(module: nn.Module) -> type:
    return getattr(type(module), "_imtok_original_class", type(module))


def patch_tag(module: nn.Module):
    return getattr(type(module), "_imtok_patch", None)


def patch_class(module: nn.Module, tag: str, methods: dict):
    """Swap module.__class__ for a subclass of its original class with `methods` (cached per class and tag), so
    parameters, buffers and state_dict keys stay those of the original module."""
    current = patch_tag(module)
    if current not in (None, tag):
        raise ValueError(f"{type(module).__name__} is already patched by {current}; remove that patch first")
    orig = original_class(module)
    key = (orig, tag)
    if key not in _CLASSES:
        _CLASSES[key] = type(tag + orig.__name__, (orig,),
                             dict(methods, _imtok_original_class=orig, _imtok_patch=tag))
    module.__class__ = _CLASSES[key]


def unpatch(module: nn.Module, tag: str, attrs=()):
    """Undo patch_class(module, tag, ...) and delete the instance attributes the patch added."""
    if patch_tag(module) == tag:
        module.__class__ = original_class(module)
        for name in attrs:
            module.__dict__.pop(name, None)


def vit_blocks(model: nn.Module):
    """The blocks of a timm-style ViT (timm VisionTransformer and its subclasses, imtok.models.vit): pre-norm
    blocks with norm1, attn (qkv or q/k/v projections), norm2, mlp. Anything else is rejected by name."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no .blocks: expected a timm-style VisionTransformer")
    for i, blk in enumerate(blocks):
        names = [c.__name__ for c in type(blk).__mro__]
        if "Block" not in names or not all(hasattr(blk, n) for n in ("norm1", "attn", "norm2", "mlp")):
            raise ValueError(f"block {i} ({type(blk).__name__}) is not a pre-norm timm Block "
                             "(x + attn(norm1(x)), x + mlp(norm2(x)))")
        if not (hasattr(blk.attn, "qkv") or hasattr(blk.attn, "q_proj")):
            raise ValueError(f"block {i}: {type(blk.attn).__name__} has neither qkv nor q_proj")
    return list(blocks)


def prefix_layout(model: nn.Module):
    """(class_token, distill_token, num_prefix_tokens) of a timm ViT."""
    class_token = getattr(model, "cls_token", None) is not None
    distill_token = getattr(model, "dist_token", None) is not None
    num_prefix = getattr(model, "num_prefix_tokens", int(class_token) + int(distill_token))
    return class_token, distill_token, num_prefix


def class_token_vit_blocks(model: nn.Module, method: str):
    """The blocks of a timm ViT whose only prefix token is the class token (EViT and GTP-ViT need exactly that)."""
    blocks = vit_blocks(model)
    class_token, _, num_prefix = prefix_layout(model)
    if not class_token or num_prefix != 1:
        raise ValueError(f"{method} needs exactly one prefix token, the class token (this model: class token "
                         f"{class_token}, {num_prefix} prefix tokens)")
    return blocks


def residual_branch(block: nn.Module, i: int, y):
    """drop_path(layer_scale(y)) of a block's residual branch i (timm's drop_path{i} / ls{i}, or drop_path)."""
    ls = getattr(block, f"ls{i}", None)
    if ls is not None:
        y = ls(y)
    dp = getattr(block, f"drop_path{i}", None) or getattr(block, "drop_path", None)
    return y if dp is None else dp(y)


def check_no_mask(attn_mask, is_causal):
    if attn_mask is not None or is_causal:
        raise NotImplementedError("token reduction patches do not support attention masks or causal attention")
