"""Quantizer warm-up: train the autoencoder continuous first, then start the codebook from k-means.

For the first `steps` steps the quantizer's output is replaced by its (l2-normalised, when the quantizer
normalises) input and its loss by zero, so encoder and decoder learn to pass the image through the latent
tokens without a codebook in the way. At step `steps` the codebook is set to k-means centres of encoder outputs
on a fixed set of training crops: every code then sits where the encoder's outputs are, the decoder sees inputs
close to those it learned on, and training goes on with the quantizer in place. The crops and the k-means seeds
are fixed by the config's seed, so a resumed run and a run on several processes (all ranks compute the same
centres; rank 0's are broadcast) give the same codebook. Works with the quantizers CodebookRestart handles.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .restart import _codebook_param


def _normalizes(module) -> bool:
    return bool(getattr(module, "l2_norm", getattr(module, "normalize", False))) or \
        getattr(module, "metric", "l2") == "cosine"


def _zero_losses(v):
    """A quantizer output with its losses zeroed: scalar float tensors and the `...loss` entries of a dict."""
    if isinstance(v, dict):
        return {k: _zero_losses(x) if k.endswith("loss") else x for k, x in v.items()}
    if torch.is_tensor(v) and v.dim() == 0 and v.is_floating_point():
        return v * 0
    return v


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator, spherical: bool) -> torch.Tensor:
    """Lloyd's k-means of x [n, d] (n >= k) from k distinct random points; empty clusters get a random point.
    spherical: unit-norm centres (the l2-normalised codebooks)."""
    x = x.double()
    centres = x[torch.randperm(x.shape[0], generator=generator)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        centres = sums / counts.clamp(min=1)[:, None]
        centres[empty] = x[torch.randint(0, x.shape[0], (int(empty.sum()),), generator=generator)]
        if spherical:
            centres = F.normalize(centres, dim=-1)
    return centres


class QuantizerWarmup:
    def __init__(self, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer, steps: int,
                 kmeans_iters: int = 20):
        self.steps, self.optimizer, self.kmeans_iters = steps, optimizer, kmeans_iters
        ema_modules = dict(ema.named_modules())
        self.quantizers = [(name, m, ema_modules[name]) for name, m in model.named_modules()
                           if hasattr(m, "codebook_size") and _codebook_param(m) is not None]
        self.bypass = False
        self._captured: dict[str, list[torch.Tensor]] | None = None
        for name, m, _ in self.quantizers:
            m.register_forward_hook(self._hook(name))

    def __bool__(self):
        return bool(self.quantizers)

    def _hook(self, name):
        def hook(module, args, output):
            z = args[0]
            if self._captured is not None:
                self._captured.setdefault(name, []).append(z.detach().reshape(-1, z.shape[-1]).float())
            if not self.bypass:
                return output
            cont = F.normalize(z.float(), dim=-1) if _normalizes(module) else z.float()
            rest = [_zero_losses(v) for v in output[1:]]
            return (cont.reshape(output[0].shape).to(output[0].dtype), *rest)
        return hook

    @torch.no_grad()
    def init_codebooks(self, model: nn.Module, crops: torch.Tensor, seed: int) -> None:
        """k-means of the quantizers' inputs on `crops` into their codebooks (and the EMA's), Adam moments of
        the codebooks zeroed."""
        was_training = model.training
        model.eval()
        self._captured = {}
        try:
            for chunk in crops.split(256):
                model(chunk)
            captured = {name: torch.cat(v) for name, v in self._captured.items()}
        finally:
            self._captured = None
            model.train(was_training)
        gen = torch.Generator().manual_seed(seed)
        distributed = dist.is_available() and dist.is_initialized()
        for name, module, ema_module in self.quantizers:
            weight, ema_weight = _codebook_param(module), _codebook_param(ema_module)
            z = captured[name]
            if z.shape[0] < module.codebook_size:
                raise ValueError(f"k-means of {module.codebook_size} codes needs at least as many encoder outputs, "
                                 f"got {z.shape[0]} (more crops)")
            centres = kmeans(z.cpu(), module.codebook_size, self.kmeans_iters, gen, _normalizes(module))
            weight.copy_(centres.to(weight.device, weight.dtype))
            if distributed:
                dist.broadcast(weight, 0)
            ema_weight.copy_(weight)
            for v in self.optimizer.state.get(weight, {}).values():
                if torch.is_tensor(v) and v.shape == weight.shape:
                    v.zero_()
