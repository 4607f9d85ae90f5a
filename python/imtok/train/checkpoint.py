"""Training checkpoints in one safetensors file: weights, EMA weights, optimizer state, RNG state, step.

Tensors live under prefixes ("model.", "ema.", "optim.<i>.<name>", "rng.<name>", ...); everything that is not
a tensor (optimizer param_groups, step, config) is JSON in the safetensors metadata. Writes go to a temporary
file that is then renamed, so an interrupted save never leaves a truncated checkpoint behind."""
from __future__ import annotations

import json
import os
import re

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def optimizer_to_flat(opt: torch.optim.Optimizer, prefix: str):
    """(tensors, json-able) for an optimizer's state_dict."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, prefix: str, tensors: dict, meta: dict):
    state: dict = {}
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.(.+)$")
    for key, value in tensors.items():
        m = pat.match(key)
        if m:
            state.setdefault(int(m.group(1)), {})[m.group(2)] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    # JSON turned tuples (betas) into lists
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["rng.cuda"] = torch.cuda.get_rng_state()
    for name, g in generators.items():
        out[f"rng.{name}"] = g.get_state()
    return out


def restore_rng(tensors: dict, generators: dict[str, torch.Generator]):
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    for name, g in generators.items():
        g.set_state(tensors[f"rng.{name}"])


def save(path: str, tensors: dict[str, torch.Tensor], meta: dict):
    seen, out = set(), {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        if v.data_ptr() in seen and v.numel():  # tied weights: safetensors refuses shared storage
            v = v.clone()
        seen.add(v.data_ptr())
        out[k] = v
    tmp = path + ".tmp"
    save_file(out, tmp, metadata={"imtok": json.dumps(meta)})
    os.replace(tmp, path)


def load(path: str, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(path, framework="pt", device=str(device)) as f:
        meta = json.loads(f.metadata()["imtok"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


def sub(tensors: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def prefixed(prefix: str, state: dict) -> dict:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def latest(folder: str) -> str | None:
    """The checkpoint with the highest step in folder (checkpoint-<step>.safetensors), or None."""
    if not os.path.isdir(folder):
        return None
    steps = [int(m.group(1)) for f in os.listdir(folder) if (m := re.fullmatch(r"checkpoint-(\d+)\.safetensors", f))]
    return os.path.join(folder, f"checkpoint-{max(steps)}.safetensors") if steps else None
