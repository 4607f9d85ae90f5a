"""Tokenizer losses that need no downloaded weights (L1/L2, PatchGAN hinge, LeCam) and the perceptual plug-in.

The PatchGAN follows taming-transformers' NLayerDiscriminator (4x4 convs, stride 2, LeakyReLU 0.2, one logit
per patch) with GroupNorm instead of BatchNorm, so a batch split over processes gives the same outputs as one
process (BatchNorm statistics would differ per rank)."""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(recon, target)
    if kind == "l2":
        return F.mse_loss(recon, target)
    raise ValueError(f"reconstruction loss must be 'l1' or 'l2', got {kind!r}")


class PatchDiscriminator(nn.Module):
    """Inputs in [0, 1] (mapped to [-1, 1] inside); returns patch logits [B, 1, h, w]."""

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, n_layers + 1):
            out = channels * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.GroupNorm(min(32, out // 4), out),
                       nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


class LeCam(nn.Module):
    """LeCam regularizer (Tseng et al. 2021): keeps D's outputs near the EMA of its outputs on the other side,
    reg = mean(relu(D(real) - ema_fake)^2) + mean(relu(ema_real - D(fake))^2). The EMAs are buffers, so they
    travel with checkpoints; under torch.distributed the batch means are averaged over processes."""

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        reg = (F.relu(logits_real - self.ema_fake).pow(2).mean() +
               F.relu(self.ema_real - logits_fake).pow(2).mean())
        if self.training:
            means = torch.stack([logits_real.detach().float().mean(), logits_fake.detach().float().mean()])
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(means)
                means /= torch.distributed.get_world_size()
            self.ema_real.lerp_(means[0], 1 - self.decay)
            self.ema_fake.lerp_(means[1], 1 - self.decay)
        return reg


def load_perceptual(spec: str | None):
    """A perceptual distance (x, y in [0, 1]) -> scalar, or (None, reason) when it cannot run here.

    spec: None (off), "lpips" (the `lpips` package with its VGG and linear-layer weights already on disk: the
    torch hub cache must hold vgg16-397923af.pth), or a path to a TorchScript module computing the distance.
    Nothing is downloaded."""
    if spec is None:
        return None, "off"
    if spec == "lpips":
        try:
            import lpips
        except ImportError:
            return None, "skipped: the `lpips` package is not installed"
        vgg = os.path.join(torch.hub.get_dir(), "checkpoints", "vgg16-397923af.pth")
        if not os.path.exists(vgg):
            return None, f"skipped: VGG16 weights not found at {vgg} (no download here)"
        net = lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False)
        return (lambda x, y: net(x * 2 - 1, y * 2 - 1).mean()), "lpips (vgg)"
    if os.path.exists(spec):
        net = torch.jit.load(spec).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return (lambda x, y: net(x, y).mean()), f"TorchScript {spec}"
    return None, f"skipped: perceptual weights {spec!r} not found"
