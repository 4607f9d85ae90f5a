"""Dead-code restart for quantizers with a learned codebook, from the trainer's side.

A small 1D tokenizer trained from scratch often starts with every latent token position mapped to one code
whatever the image (perplexity = number of positions): the encoder's output at a position barely depends on
the image yet, and the codebook and commitment losses then lock that in. Every `every` steps the codes no
token chose since the last restart are moved onto encoder outputs of the current batch (plus a little
noise), so codes sit densely where the encoder's outputs are and nearby images pick different ones: the
tokens start to carry the image. Works with imtok.layers.quantize.VectorQuantize (`embedding`) and
imtok_cuda.nn.VectorQuantizer without EMA (`embed` parameter); EMA codebooks restart themselves
(dead_code_threshold). The random picks come from a generator seeded by (seed, step), so a resumed run
restarts as an uninterrupted one. Under torch.distributed the counts are summed over ranks and the encoder
outputs gathered in the order of the global batch (rank r holds samples r, r + world, ...), so every rank
makes the choice one process with the whole batch would make (rank 0's is broadcast all the same).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


def _codebook_param(module):
    if isinstance(getattr(module, "embedding", None), nn.Embedding):
        return module.embedding.weight
    embed = getattr(module, "embed", None)
    return embed if isinstance(embed, nn.Parameter) else None


class CodebookRestart:
    def __init__(self, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer, every: int,
                 noise: float = 0.01, seed: int = 0):
        self.every, self.noise, self.optimizer, self.seed = every, noise, optimizer, seed
        ema_modules = dict(ema.named_modules())
        self.quantizers = [(name, m, ema_modules[name]) for name, m in model.named_modules()
                           if hasattr(m, "codebook_size") and _codebook_param(m) is not None]
        self.counts = {name: torch.zeros(m.codebook_size, dtype=torch.float64) for name, m, _ in self.quantizers}
        self.latest = {}
        for name, m, _ in self.quantizers:
            m.register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(module, args, output):
            if module.training:
                z, indices = args[0].detach(), output[1]
                self.latest[name] = z.reshape(z.shape[0], -1, z.shape[-1]).float()  # [B, tokens, D]
                self.counts[name] += torch.bincount(indices.reshape(-1).cpu(), minlength=module.codebook_size)
        return hook

    def __bool__(self):
        return bool(self.quantizers)

    @torch.no_grad()
    def maybe_restart(self, step: int) -> int:
        """After the optimizer step of `step`: restart unused codes every `every` steps; returns how many."""
        if (step + 1) % self.every or not self.latest:
            return 0
        total = 0
        distributed = dist.is_available() and dist.is_initialized()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        for name, module, ema_module in self.quantizers:
            weight, ema_weight = _codebook_param(module), _codebook_param(ema_module)
            counts = self.counts[name].to(weight.device)
            if distributed:
                dist.all_reduce(counts)
            dead = (counts == 0).nonzero().squeeze(1)
            if len(dead):
                z = self.latest[name]
                if distributed:
                    parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
                    dist.all_gather(parts, z.contiguous())
                    z = torch.stack(parts, 1)  # [B_local, world, tokens, D]: sample k of rank r is k * world + r
                z = z.reshape(-1, z.shape[-1]).cpu()
                pick = z[torch.randint(0, z.shape[0], (len(dead),), generator=gen)]
                pick = pick + self.noise * z.std() * torch.randn(pick.shape, generator=gen)
                weight[dead] = pick.to(weight.device, weight.dtype)
                if distributed:
                    dist.broadcast(weight, 0)
                ema_weight[dead] = weight[dead]
                state = self.optimizer.state.get(weight, {})
                for key in ("exp_avg", "exp_avg_sq"):  # stale moments would drag the moved codes back
                    if key in state:
                        state[key][dead] = 0
            total += len(dead)
            self.counts[name].zero_()
        return total

    def state(self) -> dict:
        return {f"restart.{name}": c for name, c in self.counts.items()}

    def load_state(self, tensors: dict):
        for name in self.counts:
            self.counts[name] = tensors[f"restart.{name}"].clone()
