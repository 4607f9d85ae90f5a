"""Training: data (image folders, the built-in photographs), losses (L1/L2, PatchGAN hinge, LeCam, perceptual
plug-in), the trainer (AdamW, warmup + cosine, EMA, autocast, accumulation, DDP via torchrun) and checkpoints."""
from .data import DataError, RandomCrops, heldout_crops, split_images
from .trainer import TokenizerTrainer, TrainConfig, Trainer, init_distributed, lr_at, save_grid

__all__ = ["DataError", "RandomCrops", "heldout_crops", "split_images", "TokenizerTrainer", "TrainConfig",
           "Trainer", "init_distributed", "lr_at", "save_grid"]
