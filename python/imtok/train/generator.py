"""Training a generator (imtok.generators: MaskGIT, LlamaGen GPT, ...) on the tokens of a trained tokenizer.

The tokenizer is frozen; a pool of random training crops is encoded once (the tokens of a crop do not change),
and each crop's class is its source image (one class per photograph) or, for a folder of class folders
(ImageNet layout), its folder. Generators only need training_loss(tokens, cond) -> (loss, logs) and
generate(cond, ...) -> tokens."""
from __future__ import annotations

import json
import os

import torch
import torch.nn as nn

from .data import RandomCrops, StepBatches
from .trainer import Trainer, TrainConfig


def class_labels(images) -> tuple[list[int], int]:
    """(class id per training image, number of classes): parent folders when there are several, else one
    class per image (at most 1000, then ids wrap)."""
    parents = [os.path.dirname(p) for p in images.paths]
    names = sorted(set(parents))
    if len(names) > 1:
        return [names.index(p) for p in parents], len(names)
    n = min(len(images.paths), 1000)
    return [i % n for i in range(len(images.paths))], n


def generator_overrides(name: str, tokenizer, num_classes: int, crop: int) -> dict:
    """Vocabulary, sequence length and classes of a registry generator, set from the tokenizer: 1D tokenizers
    (num_latent_tokens) give N tokens, 2D ones (downsample_factor) a (crop / f)^2 raster."""
    n = getattr(tokenizer, "num_latent_tokens", None)
    k = tokenizer.codebook_size
    if name.startswith("maskgit"):
        if n is None:
            raise ValueError("MaskGIT here runs on 1D tokens (TiTok / One-D-Piece tokenizers)")
        return {"codebook_size": k, "image_seq_len": n, "condition_num_classes": num_classes}
    if "gpt" in name:
        if n is not None:
            return {"vocab_size": k, "block_size": n, "num_classes": num_classes, "rope": "1d"}
        return {"vocab_size": k, "block_size": (crop // tokenizer.downsample_factor) ** 2, "num_classes": num_classes,
                "rope": "2d"}
    raise ValueError(f"no token settings known for generator {name!r}")


class _TrainingLoss(nn.Module):
    """forward = training_loss, so DDP's hooks (which wrap forward) see the generator's loss computation."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, tokens, cond):
        return self.generator.training_loss(tokens, cond)


class GeneratorTrainer(Trainer):
    kind = "generator"

    def __init__(self, generator: nn.Module, tokenizer: nn.Module, cfg: TrainConfig, data, labels=None,
                 pool: int = 4096, device=None):
        super().__init__(generator, cfg, device)
        train_images = data[0]
        self.labels, self.num_classes = labels if labels is not None else class_labels(train_images)
        self.tokenizer = tokenizer.to(self.device).eval().requires_grad_(False)
        crops = RandomCrops(train_images, cfg.crop, seed=cfg.seed + 1, flip=cfg.flip, scale=cfg.crop_scale)
        tokens, conds = [], []
        with torch.no_grad():
            for start in range(0, pool, 256):
                items = [crops.item(i) for i in range(start, min(pool, start + 256))]
                x = torch.stack([c for c, _ in items]).to(self.device)
                _, info = self.tokenizer.encode(x)
                tokens.append(info["min_encoding_indices"].reshape(x.shape[0], -1).cpu())
                conds += [self.labels[k] for _, k in items]
        self.tokens, self.conds = torch.cat(tokens), torch.tensor(conds)
        self.log(f"encoded {pool} training crops into {self.tokens.shape[1]} tokens each "
                 f"({self.num_classes} classes)")

    def _train_module(self):
        return _TrainingLoss(self.model)

    def batches(self, start_step: int):
        sb = StepBatches(len(self.tokens), self.cfg.batch_size, self.rank, self.world, self.cfg.seed, start_step)
        for idx in sb:
            idx = torch.tensor(idx)
            yield self.tokens[idx].to(self.device), self.conds[idx].to(self.device)

    def train_step(self, batch, step):
        tokens, conds = batch
        chunks = list(zip(tokens.chunk(self.cfg.grad_accum), conds.chunk(self.cfg.grad_accum)))
        return super().train_step(chunks, step)

    def compute(self, chunk, step):
        loss, logs = self.ddp(*chunk)
        return loss, {**{k: v.detach() for k, v in logs.items() if k != "loss"}, "loss": loss.detach()}


def sample(generator, cond: torch.Tensor, seed: int = 0, **kwargs) -> torch.Tensor:
    """Token samples for class ids cond with the generator's own sampler (MaskGIT or AR argument names)."""
    g = torch.Generator(device=cond.device).manual_seed(seed)
    generator.eval()
    if hasattr(generator, "mask_token_id"):
        opts = {"guidance_scale": 2.0, "randomize_temperature": 2.0, "num_sample_steps": 8, **kwargs}
        return generator.generate(cond, generator=g, **opts), opts
    opts = {"cfg_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0, **kwargs}
    return generator.generate(cond, generator=g, **opts), opts


def sample_images(generator, tokenizer, cond: torch.Tensor, seed: int = 0, **kwargs):
    """(images [B, 3, H, W] in [0, 1] on the CPU, sampler options) for class ids cond."""
    tokens, opts = sample(generator, cond, seed, **kwargs)
    if getattr(tokenizer, "num_latent_tokens", None) is None:  # 2D tokenizer: raster order back to a grid
        g = int(round(tokens.shape[1] ** 0.5))
        tokens = tokens.reshape(tokens.shape[0], g, g)
    with torch.no_grad():
        return tokenizer.decode_tokens(tokens).float().clamp(0, 1).cpu(), opts


def grid_rows(images: torch.Tensor, per_row: int = 8) -> list[torch.Tensor]:
    rows = [images[i:i + per_row] for i in range(0, len(images) - per_row + 1, per_row)]
    return rows or [images]


def train_demo_generator(name, tokenizer, cfg: TrainConfig, data, num_samples: int, grid_path: str,
                         pool: int = 4096, overrides: dict | None = None, zoom: int = 1) -> dict:
    """The demo's generator stage: create, train, export, sample a grid (class = source photograph)."""
    from imtok import generators

    from .trainer import save_grid

    labels, n_classes = class_labels(data[0])
    gen = generators.create(name, **{**generator_overrides(name, tokenizer, n_classes, cfg.crop), **(overrides or {})})
    tr = GeneratorTrainer(gen, tokenizer, cfg, data, labels=(labels, n_classes), pool=pool).fit()
    tr.export(os.path.join(cfg.out, "model"))
    cond = torch.arange(num_samples, device=tr.device) % n_classes
    images, opts = sample_images(tr.ema, tokenizer, cond, seed=cfg.seed)
    save_grid(grid_path, grid_rows(images), zoom=zoom)
    with open(os.path.join(cfg.out, "metrics.jsonl")) as fh:
        last = [line for line in fh if '"loss"' in line][-1]
    return {"name": name, "params": sum(p.numel() for p in gen.parameters()), "steps": cfg.steps,
            "final_loss": json.loads(last)["loss"], "num_samples": int(len(images)),
            "sampling": ", ".join(f"{k} {v}" for k, v in opts.items()) + "; class = source photograph"}
