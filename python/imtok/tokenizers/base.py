"""The one API of every imtok tokenizer (TiTok's shape) and its save / load.

    z_q, info = tok.encode(x)                   # x [B, 3, H, W] in [0, 1]; tokens in info["min_encoding_indices"]
    images = tok.decode(z_q, lengths=None)      # images in [0, 1] (not clamped: training needs the raw output)
    images = tok.decode_tokens(tokens, lengths=None)
    images, info = tok(x, lengths=None)         # in training info holds the loss terms (quantizer_loss, ...)
    tok.save_pretrained(dir); Tokenizer.from_pretrained(dir)   # model.safetensors + config.json

`lengths` (1D tokenizers): an int or a per-sample int tensor [B]; sample b is decoded from its first lengths[b]
tokens, all samples in one batched pass.

save_pretrained / from_pretrained: huggingface_hub's PyTorchModelHubMixin when it is installed (push_to_hub
and Hub downloads then work too), else a local-folder equivalent. config.json holds {"family": ..., "config":
{...}}; `Tokenizer.from_pretrained(dir)` builds the class the family names and loads the weights strictly.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

try:
    from huggingface_hub import PyTorchModelHubMixin as _HubMixin
except ImportError:  # pragma: no cover - exercised only without huggingface_hub
    _HubMixin = None

__all__ = ["Tokenizer", "check_images", "check_lengths", "FAMILIES"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FAMILIES: dict[str, type] = {}

_bases = (nn.Module, _HubMixin) if _HubMixin is not None else (nn.Module,)


class Tokenizer(*_bases):
    """Base class: subclasses set `family`, `config_class` and implement encode / decode / decode_tokens."""

    family: str = ""
    config_class: type = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("family"):
            FAMILIES[cls.family] = cls

    def __init__(self, config=None, **overrides):
        super().__init__()
        if config is None:
            config = self.config_class()
        elif isinstance(config, dict):
            config = self.config_class(**config)
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config

    # ---- the API ---------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor):
        raise NotImplementedError

    def decode(self, z_q: torch.Tensor, lengths=None):
        raise NotImplementedError

    def decode_tokens(self, tokens: torch.Tensor, lengths=None):
        raise NotImplementedError

    def forward(self, x: torch.Tensor, lengths=None):
        z_q, info = self.encode(x)
        return self.decode(z_q, lengths=lengths), info

    # ---- save / load -----------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"family": self.family, "config": dataclasses.asdict(self.config)}

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_model

        save_directory = Path(save_directory)
        save_model(self, str(save_directory / WEIGHTS_NAME))
        (save_directory / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2, sort_keys=True))

    if _HubMixin is None:
        def save_pretrained(self, save_directory):
            os.makedirs(save_directory, exist_ok=True)
            self._save_pretrained(Path(save_directory))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, map_location="cpu", strict: bool = True, **hub_kwargs):
        """Load a folder written by save_pretrained (or, with huggingface_hub, a Hub repo id). Called on the base
        class it builds the family's class named in config.json."""
        path = str(pretrained_model_name_or_path)
        if os.path.isdir(path):
            config_file, weights_file = os.path.join(path, CONFIG_NAME), os.path.join(path, WEIGHTS_NAME)
        elif _HubMixin is not None:
            from huggingface_hub import hf_hub_download

            config_file = hf_hub_download(path, CONFIG_NAME, **hub_kwargs)
            weights_file = hf_hub_download(path, WEIGHTS_NAME, **hub_kwargs)
        else:
            raise FileNotFoundError(f"pretrained_model_name_or_path {path!r} is not a folder")
        with open(config_file) as f:
            saved = json.load(f)
        if "family" not in saved or saved["family"] not in FAMILIES:
            raise ValueError(f"{config_file} names no known tokenizer family (got {saved.get('family')!r}; "
                             f"known: {sorted(FAMILIES)})")
        klass = FAMILIES[saved["family"]]
        if cls is not Tokenizer and not issubclass(klass, cls):
            raise ValueError(f"{path} holds a {klass.__name__}, not a {cls.__name__}")
        model = klass(saved["config"])
        from safetensors.torch import load_model

        load_model(model, weights_file, strict=strict, device=str(map_location))
        return model


def check_images(x, name: str = "x", image_size: int | None = None, multiple_of: int = 1):
    """x must be a float tensor [B, 3, H, W] with values in [0, 1]; H and W equal image_size (when given) and
    divisible by multiple_of."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor in [0, 1], got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape [B, 3, H, W], got {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise ValueError(f"{name} must have 3 channels (RGB) in dim 1, got shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if image_size is not None and (H != image_size or W != image_size):
        raise ValueError(f"{name} must be {image_size} x {image_size} pixels for this tokenizer, got {H} x {W}")
    if H % multiple_of or W % multiple_of:
        raise ValueError(f"{name} height and width must be divisible by {multiple_of}, got {H} x {W}")
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if not (lo >= 0.0 and hi <= 1.0):  # also rejects NaN
            raise ValueError(f"{name} values must be in [0, 1] (images are [0, 1] at this API; clamp or rescale), "
                             f"got min {lo:.4g}, max {hi:.4g}")


def check_lengths(lengths, batch_size: int, num_tokens: int, device=None):
    """None, an int or an int tensor [B] in [1, num_tokens] -> None, an int, or an int64 tensor [B]."""
    if lengths is None:
        return None
    if isinstance(lengths, bool):
        raise TypeError("lengths must be an int or an integer tensor [B], got bool")
    if isinstance(lengths, int):
        if not 1 <= lengths <= num_tokens:
            raise ValueError(f"lengths must be in [1, {num_tokens}], got {lengths}")
        return lengths
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"lengths must be an int or an integer tensor [B], got {type(lengths).__name__}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if lengths.dim() == 0:
        return check_lengths(int(lengths), batch_size, num_tokens)
    if tuple(lengths.shape) != (batch_size,):
        raise ValueError(f"lengths must have shape [B={batch_size}], got {tuple(lengths.shape)}")
    if batch_size and (int(lengths.min()) < 1 or int(lengths.max()) > num_tokens):
        raise ValueError(f"lengths must be in [1, {num_tokens}], got values in "
                         f"[{int(lengths.min())}, {int(lengths.max())}]")
    return lengths.to(device=device, dtype=torch.long)
