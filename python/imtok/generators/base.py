"""What every generator shares: the registry, save_pretrained / from_pretrained, and the sampling-op switch.

A generator is an nn.Module whose constructor takes plain keyword arguments; `self.config` holds them, so
save_pretrained writes them as JSON next to the weights (safetensors) and from_pretrained rebuilds the model.
"""
import json
import os
from typing import Callable, Dict

import torch
from torch import nn

from ..layers.switch import reference_enabled

__all__ = ["Generator", "register", "create", "available", "from_pretrained", "sampling_ops"]

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}
_CLASSES: Dict[str, type] = {}

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def sampling_ops():
    """The sampling op family the models call: imtok_cuda.reference.sampling inside `imtok.use_reference()`,
    the fused imtok_cuda.sampling otherwise (asked at call time, like the attention layer)."""
    if reference_enabled():
        from imtok_cuda.reference import sampling
    else:
        from imtok_cuda import sampling
    return sampling


class Generator(nn.Module):
    """Base class: keeps the constructor's keyword arguments as `config` and saves / loads them with the weights."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _CLASSES[cls.__name__] = cls

    def _keep_config(self, **config):
        self.config = dict(config)

    def save_pretrained(self, directory: str):
        """Write config.json ({"class": ..., "config": {...}}) and model.safetensors into `directory`."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            json.dump({"class": type(self).__name__, "config": self.config}, f, indent=1)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(directory, WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str, map_location="cpu"):
        """Rebuild a model written by save_pretrained (the class named in config.json must be `cls` or a subclass)."""
        model = from_pretrained(directory, map_location)
        if not isinstance(model, cls):
            raise TypeError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def from_pretrained(directory: str, map_location="cpu") -> Generator:
    """Any generator written by save_pretrained: reads config.json, builds the class it names, loads the weights."""
    from safetensors.torch import load_file

    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory!r} (written by save_pretrained)")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("class") not in _CLASSES:
        raise ValueError(f"{path}: unknown generator class {meta.get('class')!r}; known: {sorted(_CLASSES)}")
    model = _CLASSES[meta["class"]](**meta["config"])
    model.load_state_dict(load_file(os.path.join(directory, WEIGHTS_NAME), device=str(map_location)))
    return model


def register(name: str, factory: Callable[..., nn.Module]):
    """Make `create(name)` build factory(**overrides). Names are case-insensitive."""
    _REGISTRY[name.lower()] = factory


def create(name: str, **overrides) -> Generator:
    """Build a registered generator with random weights; keyword arguments override its configuration."""
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown generator {name!r}; available: {', '.join(available())}")
    return _REGISTRY[key](**overrides)


def available():
    """Names accepted by create()."""
    return sorted(_REGISTRY)


def check_long(name: str, t: torch.Tensor, ndim: int, low: int, high: int):
    """A clear error for token / class id tensors: integer dtype, rank, and values in [low, high)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{name} must hold integer ids, got dtype {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < low or int(t.max()) >= high):
        raise ValueError(f"{name} values must lie in [{low}, {high}), got [{int(t.min())}, {int(t.max())}]")
