"""The training loop shared by tokenizers and generators: AdamW with warmup + cosine decay, gradient clipping,
EMA of the weights, autocast, gradient accumulation, DDP under torchrun, exact resume, metrics and progress.

A run at step s uses exactly: the batch StepBatches gives for s, the learning rate lr_at(s), and RNG state
restored from the checkpoint, so `k steps + resume + k steps` ends with the same weights as 2k steps.
Subclasses say what a step computes (`compute`) and what else to save (`extra_state`)."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn

from ..layers.quantize import BinaryQuantize
from . import checkpoint as ckpt
from .data import RandomCrops, StepBatches, heldout_crops, split_images
from .losses import LeCam, PatchDiscriminator, hinge_d_loss, hinge_g_loss, load_perceptual, reconstruction_loss
from .restart import CodebookRestart
from .warmup import QuantizerWarmup


@dataclasses.dataclass
class TrainConfig:
    out: str = "runs/train"
    steps: int = 1000
    batch_size: int = 32  # global: over all processes and accumulation steps
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 50
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    clip: float = 1.0  # max gradient norm; 0 = off
    ema_decay: float = 0.999  # with warmup: min(decay, (1 + step) / (10 + step))
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 autocast on CUDA, fp32 on CPU)
    ddp_find_unused: bool = False  # DDP's find_unused_parameters, for models that skip parameters in a step
    seed: int = 0
    # data
    data: str | None = None  # folder of images; None = the photographs of scikit-image
    crop: int = 32
    # crop_scale_max 0: full-resolution crop x crop windows; else square windows whose side is a fraction
    # ~ U[crop_scale_min, crop_scale_max] of the photo's shorter side, resized to crop x crop (training and
    # held-out crops alike)
    crop_scale_min: float = 0.0
    crop_scale_max: float = 0.0
    flip: bool = True
    shuffle_channels: bool = False  # training crops with R, G, B in a random order (colour augmentation)
    heldout: int = 32  # held-out crops for evaluation and image grids
    # tokenizer losses
    rec_loss: str = "l2"
    quantizer_weight: float = 1.0
    gan_weight: float = 0.0  # PatchGAN hinge loss weight (0 = no discriminator)
    gan_start: int = 0  # step at which the discriminator starts
    lecam_weight: float = 0.0
    perceptual: str | None = None  # "lpips" or a TorchScript path; skipped (said so) without local weights
    perceptual_weight: float = 1.0
    # RobusTok latent perturbation (0 = off): alpha and delta scaled by a ratio going linearly from 1 at
    # perturb_anneal_start to perturb_end_ratio at perturb_anneal_end (0 = the last step), as RobusTok's script
    perturb_alpha: float = 0.0
    perturb_beta: float = 0.1
    perturb_delta: int = 100
    perturb_end_ratio: float = 0.0
    perturb_anneal_start: int = 0
    perturb_anneal_end: int = 0
    # binary tokenizers (BinaryQuantize): the Bernoulli temperature decays geometrically from the quantizer's own
    # temperature at step 0 to binary_temperature_end at the last step (0 = constant): sharp bits late in training
    binary_temperature_end: float = 0.0
    # 1D tokenizers: "model" leaves tail drop / nested dropout to the model's own config; "on" draws one length
    # ~ U{1..N} per sample here and passes it (forward(x, lengths=)); "off" passes N (no drop)
    tail_drop: str = "model"
    tail_drop_start: int = 0  # with tail_drop "on": all tokens before this step (a phase trained for prefixes)
    # the first N steps without quantization (continuous latents), then the codebook from k-means of encoder
    # outputs (imtok.train.warmup)
    quantizer_warmup: int = 0
    codebook_restart: int = 0  # every N steps move codes no token used onto encoder outputs (0 = off)
    # bookkeeping
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 500
    progress: bool = True

    @property
    def crop_scale(self) -> tuple[float, float] | None:
        return (self.crop_scale_min, self.crop_scale_max) if self.crop_scale_max > 0 else None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine to cfg.lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def psnr_batch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mse = (x.float().clamp(0, 1) - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def save_grid(path: str, rows: list[torch.Tensor], pad: int = 2, zoom: int = 1):
    """PNG of image rows (each [n, 3, H, W] in [0, 1]) stacked vertically, white padding; zoom: each pixel
    drawn as a zoom x zoom block (small crops stay visible in a page)."""
    from PIL import Image

    if zoom > 1:
        rows = [r.repeat_interleave(zoom, -1).repeat_interleave(zoom, -2) for r in rows]

    n, _, h, w = rows[0].shape
    canvas = torch.ones(3, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for r, imgs in enumerate(rows):
        for c in range(n):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            canvas[:, top:top + h, left:left + w] = imgs[c].detach().float().cpu().clamp(0, 1)
    arr = (canvas.permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
    Image.fromarray(arr).save(path)


def _dist_info():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed():
    """Join the process group torchrun describes (WORLD_SIZE > 1); nccl on CUDA, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


class Trainer:
    """One model trained with AdamW; subclasses implement compute(batch, step) -> (loss, logs)."""

    kind = "model"

    def __init__(self, model: nn.Module, cfg: TrainConfig, device=None):
        self.cfg = cfg
        self.rank, self.world = _dist_info()
        if device is None:
            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if cfg.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {cfg.precision!r}")
        self.amp = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        if cfg.batch_size % (self.world * cfg.grad_accum):
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by processes x grad_accum = "
                             f"{self.world} x {cfg.grad_accum}")
        torch.manual_seed(cfg.seed + self.rank)
        self.model = model.to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.ddp = self._wrap(self._train_module())  # DDP broadcasts rank 0's initial weights ...
        self.ema.load_state_dict(self.model.state_dict())  # ... which the EMA starts from on every rank
        self.opt = self._adamw(self.model)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # same on every rank: global random choices
        self.step = 0
        self.out = cfg.out
        self._metrics = None

    # ---- setup helpers ------------------------------------------------------------------------------------
    def _wrap(self, module):
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        # quantizers all-reduce their own EMA statistics; rank 0's buffers must not overwrite them
        return DDP(module, device_ids=ids, broadcast_buffers=False, find_unused_parameters=self.cfg.ddp_find_unused)

    def _adamw(self, module):
        decay, no_decay = [], []
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2))

    @property
    def is_main(self):
        return self.rank == 0

    def log(self, msg: str):
        if self.is_main:
            print(msg, flush=True)

    # ---- what subclasses provide --------------------------------------------------------------------------
    def _train_module(self) -> nn.Module:
        """The module whose forward compute() calls (what DDP wraps)."""
        return self.model

    def compute(self, batch, step: int):
        raise NotImplementedError

    def batches(self, start_step: int):
        raise NotImplementedError

    def evaluate(self, step: int) -> dict:
        return {}

    def extra_state(self) -> tuple[dict, dict]:
        return {}, {}

    def load_extra_state(self, tensors: dict, meta: dict):
        pass

    # ---- the loop -----------------------------------------------------------------------------------------
    def _update_ema(self, step: int):
        decay = min(self.cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.parameters()):
                e.lerp_(p.detach(), 1 - decay)
            for e, b in zip(self.ema.buffers(), self.model.buffers()):
                e.copy_(b)

    def _reduce(self, logs: dict) -> dict:
        if self.world == 1 or not logs:
            return logs
        keys = sorted(logs)
        t = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, (t / self.world).tolist()))

    def train_step(self, batch, step: int) -> dict:
        cfg = self.cfg
        lr = lr_at(step, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        chunks = batch.chunk(cfg.grad_accum) if torch.is_tensor(batch) else batch
        sums: dict = {}
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = self.ddp.no_sync() if (self.world > 1 and not last) else contextlib.nullcontext()
            with sync, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss, logs = self.compute(chunk, step)
            with sync:
                (loss / len(chunks)).backward()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v) / len(chunks)
        if cfg.clip > 0:
            sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip))
        self.opt.step()
        self._update_ema(step)
        logs = self._reduce(sums)
        logs["lr"] = lr
        return logs

    def fit(self, resume: bool | str = False, stop_at: int | None = None):
        """Train to cfg.steps. resume: True = the latest checkpoint in cfg.out (if any), or a checkpoint path.
        stop_at: stop after this step with a checkpoint (a time-sliced job); the schedules still run to
        cfg.steps, so resuming later continues exactly."""
        cfg = self.cfg
        if self.is_main:
            os.makedirs(self.out, exist_ok=True)
            with open(os.path.join(self.out, "config.json"), "w") as fh:
                json.dump(dataclasses.asdict(cfg), fh, indent=1)
        path = ckpt.latest(self.out) if resume is True else (resume or None)
        if path:
            self.load(path)
            self.log(f"resumed from {path} at step {self.step}")
        elif self.is_main and os.path.exists(os.path.join(self.out, "metrics.jsonl")):
            os.remove(os.path.join(self.out, "metrics.jsonl"))
        if self.step >= cfg.steps:
            return self
        bar = None
        if self.is_main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.kind}", dynamic_ncols=True)
        t0 = time.time()
        it = iter(self.batches(self.step))
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        for step in range(self.step, end):
            logs = self.train_step(next(it), step)
            self.step = step + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{logs[k]:.4g}" for k in ("loss", "psnr", "perplexity") if k in logs})
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._write_metrics({"step": self.step, "time": round(time.time() - t0, 3), **logs})
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                ev = self.evaluate(self.step)
                if ev:
                    self._write_metrics({"step": self.step, **{f"eval/{k}": v for k, v in ev.items()}})
            if (cfg.save_every and (self.step % cfg.save_every == 0 or self.step == cfg.steps)) or self.step == end:
                self.save(os.path.join(self.out, f"checkpoint-{self.step}.safetensors"))
        if bar is not None:
            bar.close()
        return self

    def _write_metrics(self, row: dict):
        if self.is_main:
            with open(os.path.join(self.out, "metrics.jsonl"), "a") as fh:
                fh.write(json.dumps(row) + "\n")

    def export(self, folder: str):
        """The EMA weights as a model folder: save_pretrained when the model has it, else model.safetensors."""
        if not self.is_main:
            return
        if hasattr(self.ema, "save_pretrained"):
            self.ema.save_pretrained(folder)
        else:
            os.makedirs(folder, exist_ok=True)
            ckpt.save(os.path.join(folder, "model.safetensors"), self.ema.state_dict(), {"kind": self.kind})

    # ---- checkpoints --------------------------------------------------------------------------------------
    def _rng_tensors(self):
        local = ckpt.rng_state({"trainer": self.gen})
        if self.world == 1:
            return {k + ".r0": v for k, v in local.items()}
        gathered = [None] * self.world
        dist.all_gather_object(gathered, local)
        return {f"{k}.r{r}": v for r, st in enumerate(gathered) for k, v in st.items()}

    def save(self, path: str):
        rng = self._rng_tensors()  # collective: every rank takes part
        if not self.is_main:
            return
        opt_t, opt_meta = ckpt.optimizer_to_flat(self.opt, "optim")
        extra_t, extra_meta = self.extra_state()
        tensors = {**ckpt.prefixed("model", self.model.state_dict()), **ckpt.prefixed("ema", self.ema.state_dict()),
                   **opt_t, **extra_t, **rng}
        meta = {"step": self.step, "world": self.world, "kind": self.kind, "config": dataclasses.asdict(self.cfg),
                "optim": opt_meta, **extra_meta}
        ckpt.save(path, tensors, meta)

    def load(self, path: str):
        tensors, meta = ckpt.load(path)
        self.model.load_state_dict(ckpt.sub(tensors, "model"))
        self.ema.load_state_dict(ckpt.sub(tensors, "ema"))
        ckpt.optimizer_from_flat(self.opt, "optim", tensors, meta["optim"])
        self.load_extra_state(tensors, meta)
        self.step = meta["step"]
        suffix = f".r{self.rank}"
        mine = {k[:-len(suffix)]: v for k, v in tensors.items() if k.startswith("rng.") and k.endswith(suffix)}
        if meta["world"] == self.world:
            ckpt.restore_rng(mine, {"trainer": self.gen})
        else:
            self.log(f"checkpoint was written by {meta['world']} processes, resuming on {self.world}: "
                     "weights and optimizer restored, random streams reseeded (not bit-exact)")
            torch.manual_seed(self.cfg.seed + self.rank + self.step)
            self.gen.manual_seed(self.cfg.seed + self.step)


def _accepts_lengths(model) -> bool:
    try:
        return "lengths" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _vq_modules(model):
    """Vector quantizers that take a RobusTok `perturbation` dict (imtok_cuda.nn.VectorQuantizer and
    imtok.layers.quantize.VectorQuantize)."""
    return [m for m in model.modules() if hasattr(m, "perturbation") and hasattr(m, "codebook_size")]


def _binary_quantizers(model):
    return [m for m in model.modules() if isinstance(m, BinaryQuantize)]


def binary_temperature_at(step: int, start: float, cfg: TrainConfig) -> float:
    """The Bernoulli temperature at a step: start * (end / start) ** (step / (steps - 1))."""
    t = min(max(step / max(1, cfg.steps - 1), 0.0), 1.0)
    return start * (cfg.binary_temperature_end / start) ** t


def perturbation_at(step: int, cfg: TrainConfig) -> tuple[float, int]:
    """(alpha, delta) of the RobusTok schedule at a step."""
    start, end = cfg.perturb_anneal_start, cfg.perturb_anneal_end or cfg.steps
    t = min(max((step - start) / max(1, end - start), 0.0), 1.0)
    ratio = 1.0 + (cfg.perturb_end_ratio - 1.0) * t
    return cfg.perturb_alpha * ratio, max(1, round(cfg.perturb_delta * ratio))


class TokenizerTrainer(Trainer):
    """Reconstruction training of any module with forward(x[, lengths]) -> (reconstruction, info).

    Loss = rec (L1/L2, or the model's own info["rec_loss"]) + quantizer_weight * info["quantizer_loss"] (or
    info["loss"]) + optional perceptual +
    optional PatchGAN hinge (generator side) with LeCam on the discriminator. 1D tokenizers (a
    `num_latent_tokens` attribute and a `lengths` argument) drop tail tokens as their config says, or with
    cfg.tail_drop="on" get lengths ~ U{1..N} per sample drawn here for the global batch, so that any split
    over processes sees the same lengths."""

    kind = "tokenizer"

    def __init__(self, model: nn.Module, cfg: TrainConfig, device=None, data=None):
        super().__init__(model, cfg, device)
        self.train_images, self.heldout_images = data if data is not None else split_images(cfg.data, cfg.crop)
        self.log(f"data: train {self.train_images.summary()}, held-out {self.heldout_images.summary()}")
        self.dataset = RandomCrops(self.train_images, cfg.crop, seed=cfg.seed, flip=cfg.flip, scale=cfg.crop_scale,
                                   shuffle_channels=cfg.shuffle_channels)
        self.heldout = heldout_crops(self.heldout_images, cfg.crop, cfg.heldout, scale=cfg.crop_scale) \
            if cfg.heldout else None
        if cfg.tail_drop not in ("model", "on", "off"):
            raise ValueError(f"tail_drop must be model, on or off, got {cfg.tail_drop!r}")
        n_tokens = getattr(model, "num_latent_tokens", None)
        supports = n_tokens is not None and _accepts_lengths(model)
        if cfg.tail_drop == "on" and not supports:
            raise ValueError("tail_drop='on' needs a 1D tokenizer (num_latent_tokens and forward(x, lengths=))")
        self.tail_drop = cfg.tail_drop if supports and cfg.tail_drop != "model" else None
        self.num_tokens = n_tokens
        self.vqs = _vq_modules(model)
        if cfg.perturb_alpha > 0 and not self.vqs:
            raise ValueError("latent perturbation needs a VectorQuantizer in the tokenizer")
        if cfg.binary_temperature_end < 0 or not math.isfinite(cfg.binary_temperature_end):
            raise ValueError(f"binary_temperature_end must be >= 0, got {cfg.binary_temperature_end}")
        # (quantizer, its configured temperature: the schedule's start, also after a resume)
        self.binaries = [(q, q.temperature) for q in _binary_quantizers(model)]
        if cfg.binary_temperature_end > 0 and not self.binaries:
            raise ValueError("binary_temperature_end needs a BinaryQuantize in the tokenizer")
        self.restart = None
        if cfg.codebook_restart:
            self.restart = CodebookRestart(self.model, self.ema, self.opt, cfg.codebook_restart, seed=cfg.seed)
            if not self.restart:
                raise ValueError("codebook_restart needs a quantizer with a learned codebook (embedding / embed)")
        self.warmup = None
        if cfg.quantizer_warmup:
            self.warmup = QuantizerWarmup(self.model, self.ema, self.opt, cfg.quantizer_warmup)
            if not self.warmup:
                raise ValueError("quantizer_warmup needs a quantizer with a learned codebook (embedding / embed)")
        self.perceptual, why = load_perceptual(cfg.perceptual)
        if cfg.perceptual is not None:
            self.log(f"perceptual loss: {why}")
        self.critic = None
        if cfg.gan_weight > 0:
            # taming's 3 layers need 32 px; smaller crops get fewer so at least 2x2 patch logits remain
            layers = max(1, min(3, cfg.crop.bit_length() - 3))
            self.critic = nn.ModuleDict({"disc": PatchDiscriminator(n_layers=layers), "lecam": LeCam()})
            self.critic.to(self.device)
            self.critic_ddp = self._wrap(self.critic["disc"])
            self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=cfg.lr, betas=(0.5, 0.9),
                                                weight_decay=0.0)
        self._lengths = None

    def batches(self, start_step: int):
        sb = StepBatches(len(self.dataset), self.cfg.batch_size, self.rank, self.world, self.cfg.seed, start_step)
        for idx in sb:
            yield torch.stack([self.dataset[i] for i in idx]).to(self.device, non_blocking=True)

    def _set_perturbation(self, step: int):
        if self.cfg.perturb_alpha <= 0:
            return
        alpha, delta = perturbation_at(step, self.cfg)
        p = {"alpha": alpha, "beta": self.cfg.perturb_beta, "delta": delta}
        for q in self.vqs:
            # quantizers with their own schedule get a constant one: the trainer's schedule is the one in force
            q.perturbation = {**p, "end_ratio": 1.0, "anneal_start": 0, "anneal_end": 0} \
                if hasattr(q, "perturbation_schedule") else p

    def _init_codebooks(self):
        """The end of the quantizer warm-up: k-means codebooks from encoder outputs on fixed training crops."""
        cfg = self.cfg
        n = max(512, -(-4 * max(m.codebook_size for _, m, _ in self.warmup.quantizers) // self.num_tokens)) \
            if self.num_tokens else 512
        crops = RandomCrops(self.train_images, cfg.crop, seed=cfg.seed + 2, flip=cfg.flip, scale=cfg.crop_scale)
        x = torch.stack([crops[i] for i in range(n)]).to(self.device)
        self.warmup.init_codebooks(self.model, x, cfg.seed)
        if self.restart is not None:  # usage counted on the old codebook means nothing for the new one
            for c in self.restart.counts.values():
                c.zero_()

    def train_step(self, batch, step):
        self._set_perturbation(step)
        if self.cfg.binary_temperature_end > 0:
            for q, start in self.binaries:
                q.temperature = binary_temperature_at(step, start, self.cfg)
        warming = self.warmup is not None and step < self.cfg.quantizer_warmup
        if self.warmup is not None:
            if step == self.cfg.quantizer_warmup:
                self._init_codebooks()
            self.warmup.bypass = warming
        if self.tail_drop == "on" and step >= self.cfg.tail_drop_start:
            full = torch.randint(1, self.num_tokens + 1, (self.cfg.batch_size,), generator=self.gen)
        elif self.tail_drop:
            full = torch.full((self.cfg.batch_size,), self.num_tokens, dtype=torch.long)
        if self.tail_drop:
            self._lengths = full[self.rank::self.world].to(self.device).chunk(self.cfg.grad_accum)
            self._chunk = 0
        logs = super().train_step(batch, step)
        if self.restart is not None and (step + 1) % self.cfg.codebook_restart == 0 and not warming:
            logs["codes_restarted"] = self.restart.maybe_restart(step)
        if self.critic is not None and step >= self.cfg.gan_start:
            logs.update(self._reduce(self._critic_step(batch, step)))
        return logs

    def compute(self, x, step):
        cfg = self.cfg
        if self.tail_drop:
            lengths = self._lengths[self._chunk]
            self._chunk += 1
            recon, info = self.ddp(x, lengths=lengths)
        else:
            recon, info = self.ddp(x)
        recon = recon.float()
        # a model with its own reconstruction objective (FlexTok's flow matching) puts it in info["rec_loss"]
        rec = info["rec_loss"].float() if "rec_loss" in info else reconstruction_loss(recon, x, cfg.rec_loss)
        qloss = info.get("quantizer_loss", info.get("loss"))
        loss = rec
        logs = {"rec_loss": rec.detach()}
        if qloss is not None:
            loss = loss + cfg.quantizer_weight * qloss.float()
            logs["quantizer_loss"] = qloss.detach()
        if self.perceptual is not None:
            p = self.perceptual(recon, x)
            loss = loss + cfg.perceptual_weight * p
            logs["perceptual_loss"] = p.detach()
        if self.critic is not None and step >= cfg.gan_start:
            disc = self.critic["disc"]
            disc.requires_grad_(False)
            g = hinge_g_loss(disc(recon))  # plain module: D's weights get no gradient from the generator side
            disc.requires_grad_(True)
            loss = loss + cfg.gan_weight * g
            logs["g_loss"] = g.detach()
        if torch.is_tensor(info.get("perplexity")):  # code usage of the batch: collapse shows here first
            logs["perplexity"] = info["perplexity"].detach().float()
        logs["loss"] = loss.detach()
        logs["psnr"] = psnr_batch(recon.detach(), x).mean()
        self._last_recon = recon.detach()
        return loss, logs

    def _critic_step(self, x, step):
        """One discriminator update on this step's batch and the reconstructions it produced (no re-forward)."""
        cfg = self.cfg
        for g in self.critic_opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        self.critic.train()
        self.critic_opt.zero_grad(set_to_none=True)
        fake = self._last_recon if cfg.grad_accum == 1 else None
        if fake is None:  # with accumulation only the last chunk's reconstructions were kept: recompute
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                fake = self.model(x)[0].float()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            # one forward for both (GroupNorm is per sample): DDP expects one forward per backward
            real_logits, fake_logits = self.critic_ddp(torch.cat([x, fake])).float().chunk(2)
        d = hinge_d_loss(real_logits, fake_logits)
        loss = d
        logs = {"d_loss": d.detach()}
        if cfg.lecam_weight > 0:
            reg = self.critic["lecam"](real_logits, fake_logits)
            loss = loss + cfg.lecam_weight * reg
            logs["lecam"] = reg.detach()
        loss.backward()
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.clip)
        self.critic_opt.step()
        return {k: float(v) for k, v in logs.items()}

    def extra_state(self):
        tensors = self.restart.state() if self.restart is not None else {}
        if self.critic is None:
            return tensors, {}
        t, m = ckpt.optimizer_to_flat(self.critic_opt, "critic_optim")
        return {**tensors, **ckpt.prefixed("critic", self.critic.state_dict()), **t}, {"critic_optim": m}

    def load_extra_state(self, tensors, meta):
        if self.restart is not None:
            self.restart.load_state(tensors)
        if self.critic is not None:
            self.critic.load_state_dict(ckpt.sub(tensors, "critic"))
            ckpt.optimizer_from_flat(self.critic_opt, "critic_optim", tensors, meta["critic_optim"])

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, model=None) -> torch.Tensor:
        model = self.ema if model is None else model
        model.eval()
        out = []
        for chunk in x.split(64):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out.append(model(chunk.to(self.device))[0].float().clamp(0, 1).cpu())
        return torch.cat(out)

    def evaluate(self, step):
        if self.heldout is None or not self.is_main:
            return {}
        recon = self.reconstruct(self.heldout)
        n = min(8, len(self.heldout))
        save_grid(os.path.join(self.out, f"heldout-{step:06d}.png"), [self.heldout[:n], recon[:n]])
        return {"psnr": float(psnr_batch(recon, self.heldout).mean())}
