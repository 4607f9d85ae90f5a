"""tomesd (ToMe for Stable Diffusion, Bolya & Hoffman 2023; PyPI tomesd 0.1.3) on a diffusers UNet.

apply_tomesd(pipe_or_unet, ratio=0.5, max_downsample=1, sx=2, sy=2, use_rand=True, merge_attn=True,
             merge_crossattn=False, merge_mlp=False)
takes the arguments of tomesd.apply_patch and behaves as it does on a diffusers UNet2DConditionModel (SD 1.x,
SD 2.x, SDXL: every BasicTransformerBlock), any pipeline holding one as `.unet`, or another diffusers model made
of BasicTransformerBlocks (DiT's transformer, ada_norm_zero):
  * a forward pre-hook on the UNet records the latent size (h, w) of every call;
  * each transformer block computes one merge per call from its input x (before norm1): destinations are one
    token per sy x sx cell (random inside the cell, drawn from a generator forked from the global RNG on the
    first call and advancing from call to call, or the top-left one when use_rand is off or the batch is odd),
    r = int(N * ratio) tokens merged; blocks below the latent's resolution by more than max_downsample are left
    alone;
  * m / u wrap self-attention (merge_attn), cross-attention (merge_crossattn) and the MLP (merge_mlp):
    x = u(attn1(m(norm1(x)))) + x, ...
The matching and (un)merging run imtok_cuda.merge's fused ops (no score matrix, one pass per merge); inside
imtok.use_reference() their references. Given the same seed, outputs equal tomesd's.
"""
import math

import torch
from torch import nn

from imtok_cuda import merge as _fused
from imtok_cuda.reference import merge as _reference

from ._patch import ops, patch_class, unpatch

__all__ = ["apply_tomesd", "remove_tomesd"]

_TAG = "ToMeSD"
_SUPPORTED_NORMS = ("layer_norm", "ada_norm", "ada_norm_zero")


def _do_nothing(x, mode=None):
    return x


def _fork_generator(device: torch.device, fallback=None) -> torch.Generator:
    """tomesd's init_generator: a generator holding the current state of the global RNG of `device`."""
    if device.type == "cpu":
        return torch.Generator(device="cpu").set_state(torch.get_rng_state())
    if device.type == "cuda":
        return torch.Generator(device=device).set_state(torch.cuda.get_rng_state(device))
    return _fork_generator(torch.device("cpu")) if fallback is None else fallback


def _compute_merge(x: torch.Tensor, info: dict):
    """tomesd's compute_merge: (m_a, m_c, m_m, u_a, u_c, u_m) for one block call."""
    original_h, original_w = info["size"]
    downsample = int(math.ceil(math.sqrt(original_h * original_w // x.shape[1])))
    args = info["args"]
    m = u = _do_nothing
    if downsample <= args["max_downsample"]:
        w = int(math.ceil(original_w / downsample))
        h = int(math.ceil(original_h / downsample))
        r = int(x.shape[1] * args["ratio"])
        if args["generator"] is None:
            args["generator"] = _fork_generator(x.device)
        elif args["generator"].device != x.device:
            args["generator"] = _fork_generator(x.device, fallback=args["generator"])
        # an odd batch cannot hold conditional and unconditional halves alike: no randomness (as tomesd)
        use_rand = False if x.shape[0] % 2 == 1 else args["use_rand"]
        m, u = ops(_fused, _reference).bipartite_soft_matching_random2d(
            x, w, h, args["sx"], args["sy"], r, no_rand=not use_rand, generator=args["generator"])
    pick = [(m, u) if args[k] else (_do_nothing, _do_nothing) for k in ("merge_attn", "merge_crossattn", "merge_mlp")]
    (m_a, u_a), (m_c, u_c), (m_m, u_m) = pick
    return m_a, m_c, m_m, u_a, u_c, u_m


def _block_forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                   encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None, class_labels=None,
                   added_cond_kwargs=None):
    """diffusers' BasicTransformerBlock.forward (layer_norm / ada_norm / ada_norm_zero) with tomesd's merges."""
    m_a, m_c, m_m, u_a, u_c, u_m = _compute_merge(hidden_states, self._tome_info)
    norm_type = self.norm_type
    if norm_type == "ada_norm":
        norm_hidden_states = self.norm1(hidden_states, timestep)
    elif norm_type == "ada_norm_zero":
        norm_hidden_states, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(
            hidden_states, timestep, class_labels, hidden_dtype=hidden_states.dtype)
    else:
        norm_hidden_states = self.norm1(hidden_states)
    cross_attention_kwargs = dict(cross_attention_kwargs or {})
    attn_output = self.attn1(m_a(norm_hidden_states),
                             encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
                             attention_mask=attention_mask, **cross_attention_kwargs)
    if norm_type == "ada_norm_zero":
        attn_output = gate_msa.unsqueeze(1) * attn_output
    hidden_states = u_a(attn_output) + hidden_states
    if self.attn2 is not None:
        norm_hidden_states = self.norm2(hidden_states, timestep) if norm_type == "ada_norm" else self.norm2(
            hidden_states)
        attn_output = self.attn2(m_c(norm_hidden_states), encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=encoder_attention_mask, **cross_attention_kwargs)
        hidden_states = u_c(attn_output) + hidden_states
    norm_hidden_states = self.norm3(hidden_states)
    if norm_type == "ada_norm_zero":
        norm_hidden_states = norm_hidden_states * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    ff_output = self.ff(m_m(norm_hidden_states))
    if norm_type == "ada_norm_zero":
        ff_output = gate_mlp.unsqueeze(1) * ff_output
    return u_m(ff_output) + hidden_states


def _record_size(module, args, kwargs):
    sample = args[0] if args else kwargs["sample"]
    module._tome_info["size"] = (sample.shape[2], sample.shape[3])


def _is_transformer_block(module: nn.Module) -> bool:
    return any(c.__name__ == "BasicTransformerBlock" for c in type(module).__mro__)


def _unet(pipe_or_unet: nn.Module) -> nn.Module:
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    if not isinstance(unet, nn.Module) or not any(_is_transformer_block(m) for m in unet.modules()):
        raise ValueError(f"{type(pipe_or_unet).__name__} is neither a diffusers UNet with BasicTransformerBlocks "
                         "nor a pipeline holding one as .unet")
    return unet


def apply_tomesd(pipe_or_unet, ratio: float = 0.5, max_downsample: int = 1, sx: int = 2, sy: int = 2,
                 use_rand: bool = True, merge_attn: bool = True, merge_crossattn: bool = False,
                 merge_mlp: bool = False):
    """Patch a diffusers pipeline or UNet in place with tomesd (any earlier patch is removed first); returns it."""
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    if sx < 1 or sy < 1:
        raise ValueError(f"sx and sy must be >= 1, got sx={sx}, sy={sy}")
    unet = _unet(pipe_or_unet)
    remove_tomesd(unet)
    blocks = [m for m in unet.modules() if _is_transformer_block(m)]
    for blk in blocks:
        norm_type = getattr(blk, "norm_type", "layer_norm")
        if norm_type not in _SUPPORTED_NORMS or getattr(blk, "pos_embed", None) is not None \
                or hasattr(blk, "fuser"):
            raise ValueError(f"tomesd supports BasicTransformerBlocks with norm_type in {_SUPPORTED_NORMS}, no "
                             f"positional embedding and no GLIGEN fuser; got norm_type={norm_type!r}")
    info = {"size": None, "hooks": [], "args": {
        "ratio": ratio, "max_downsample": max_downsample, "sx": sx, "sy": sy, "use_rand": use_rand,
        "generator": None, "merge_attn": merge_attn, "merge_crossattn": merge_crossattn, "merge_mlp": merge_mlp}}
    unet._tome_info = info
    info["hooks"].append(unet.register_forward_pre_hook(_record_size, with_kwargs=True))
    for blk in blocks:
        patch_class(blk, _TAG, {"forward": _block_forward})
        blk._tome_info = info
    return pipe_or_unet


def remove_tomesd(pipe_or_unet):
    """Undo apply_tomesd: hooks removed, original classes, no added attributes."""
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    info = unet.__dict__.pop("_tome_info", None)
    if info is not None:
        for hook in info["hooks"]:
            hook.remove()
    for m in unet.modules():
        unpatch(m, _TAG, ("_tome_info",))
    return pipe_or_unet
