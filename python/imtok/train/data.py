"""Training data: random crops of a folder of images, or of the photographs that ship with scikit-image.

Every crop is a pure function of (seed, index): the image, the crop position and the flip are drawn from a
generator seeded with both, so a run resumed at step k sees exactly the crops an uninterrupted run would, and
two processes that each take half of a global batch (DistributedSampler) see the same crops as one process.
The held-out split is by image (never by crop), so no pixel of a held-out image is trained on.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# The photographs of skimage.data (natural images; charts, logos, tiny and synthetic files left out). Most are
# grayscale, so only two of the colour photographs are held out (the stereo pair stays together in training):
# the demo's reconstruction grid is then easy to judge by eye and training still sees colour.
BUILTIN_TRAIN = ("astronaut.png", "brick.png", "camera.png", "cell.png", "clock_motion.png", "coffee.png",
                 "coins.png", "color.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
                 "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg", "text.png")
BUILTIN_HELDOUT = ("chelsea.png", "rocket.jpg")


class DataError(ValueError):
    """A data folder that cannot be trained on (empty, nothing readable, every image smaller than the crop)."""


def builtin_dir() -> str:
    try:
        import skimage
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise DataError("the built-in photographs come from scikit-image: pip install scikit-image "
                        "(or pass a folder of images with --data)") from e
    return skimage.data_dir


def list_images(root: str) -> list[str]:
    """Image files under root, recursively, sorted (relative order is what makes the split deterministic)."""
    if not os.path.isdir(root):
        raise DataError(f"data folder {root!r} does not exist")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root!r}")
    return found


def load_rgb(path: str) -> np.ndarray:
    """HWC uint8 RGB (grayscale is repeated, alpha dropped)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _is_heldout(rel_path: str, heldout_fraction: float) -> bool:
    h = int(hashlib.sha1(rel_path.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < heldout_fraction


class ImageSet:
    """Readable images of one split, each at least `min_size` on both sides, kept in memory as uint8 HWC.

    skipped: {"unreadable": [...], "too_small": [...]} so callers can report what was left out and why."""

    def __init__(self, paths: list[str], min_size: int, name: str = "usable"):
        self.paths, self.images = [], []
        self.skipped = {"unreadable": [], "too_small": []}
        for p in paths:
            try:
                img = load_rgb(p)
            except Exception:  # PIL raises many types for broken files; all mean "cannot use this file"
                self.skipped["unreadable"].append(p)
                continue
            if min(img.shape[:2]) < min_size:
                self.skipped["too_small"].append(p)
                continue
            self.paths.append(p)
            self.images.append(img)
        if not self.images:
            n_bad, n_small = len(self.skipped["unreadable"]), len(self.skipped["too_small"])
            raise DataError(f"no usable {name} image out of {len(paths)}: {n_bad} unreadable, {n_small} smaller "
                            f"than the {min_size}x{min_size} crop" +
                            (f" (e.g. {self.skipped['too_small'][0]})" if n_small else ""))

    def __len__(self):
        return len(self.images)

    def subset(self, keep: list[bool], with_skipped: bool) -> "ImageSet":
        """The images where keep is True (and the list of skipped files when with_skipped)."""
        out = ImageSet.__new__(ImageSet)
        out.paths = [p for p, k in zip(self.paths, keep) if k]
        out.images = [i for i, k in zip(self.images, keep) if k]
        out.skipped = self.skipped if with_skipped else {"unreadable": [], "too_small": []}
        return out

    def summary(self) -> str:
        s = f"{len(self.images)} images"
        for why, items in self.skipped.items():
            if items:
                s += f", {len(items)} skipped ({why.replace('_', ' ')})"
        return s


def split_images(data: str | None, crop: int, heldout_fraction: float = 0.15) -> tuple[ImageSet, ImageSet]:
    """(train, heldout) image sets. data=None: the built-in photographs with a fixed held-out list; a folder:
    of its usable images, held-out by a hash of each file's path relative to the folder (stable when files are
    added), with at least one image on each side. Unreadable files are skipped with a warning that counts them."""
    if data is None:
        root = builtin_dir()
        return (ImageSet([os.path.join(root, f) for f in BUILTIN_TRAIN], crop, "training"),
                ImageSet([os.path.join(root, f) for f in BUILTIN_HELDOUT], crop, "held-out"))
    usable = ImageSet(list_images(data), crop)
    bad = usable.skipped["unreadable"]
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image file(s), e.g. {bad[0]}")
    if len(usable) < 2:
        raise DataError(f"need at least 2 usable images under {data!r} (one is held out), found {len(usable)}")
    flags = [_is_heldout(os.path.relpath(p, data), heldout_fraction) for p in usable.paths]
    if not any(flags):
        flags[-1] = True
    if all(flags):
        flags[0] = False
    return usable.subset([not f for f in flags], True), usable.subset(flags, False)


def _crop(img: np.ndarray, size: int, gen: torch.Generator, flip: bool,
          scale: tuple[float, float] | None = None) -> torch.Tensor:
    """A size x size crop, float CHW in [0, 1]. scale None: a window of size x size pixels (full resolution);
    scale (lo, hi): a square window whose side is a fraction ~ U[lo, hi] of the image's shorter side (at least
    `size` pixels), resized to size x size (PIL bilinear, antialiased), so the crop shows a part of the photo
    and not a nearly flat patch of it. With scale, pass the image through `reduced` first (same crops, faster)."""
    h, w = img.shape[:2]
    side = size
    if scale is not None:
        frac = scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=gen))
        side = min(min(h, w), max(size, round(frac * min(h, w))))
    top = int(torch.randint(0, h - side + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - side + 1, (1,), generator=gen))
    window = img[top:top + side, left:left + side]
    if side != size:
        from PIL import Image

        window = np.array(Image.fromarray(np.ascontiguousarray(window)).resize((size, size), Image.BILINEAR))
    out = torch.from_numpy(np.ascontiguousarray(window)).permute(2, 0, 1)
    if flip and bool(torch.rand((), generator=gen) < 0.5):
        out = out.flip(-1)
    return out.float().div_(255.0)


def reduced(img: np.ndarray, size: int, scale: tuple[float, float] | None) -> np.ndarray:
    """The image downscaled (antialiased) so that its smallest crop window (scale[0] of the shorter side) is
    at most 2 x size pixels: crops of scaled windows then resize a few hundred pixels, not millions."""
    h, w = img.shape[:2]
    target = math.ceil(2 * size / scale[0]) if scale is not None else min(h, w)
    if min(h, w) <= target:
        return img
    from PIL import Image

    f = target / min(h, w)
    return np.array(Image.fromarray(img).resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR))


class RandomCrops(Dataset):
    """`length` virtual samples; sample i is a random crop (and horizontal flip) of a random image, fixed by
    (seed, i). Every image is equally likely (by area, one big photograph would dominate a small folder).
    shuffle_channels: the crop's R, G, B in a random order (a colour augmentation: a training set of few colour
    photographs then covers the hues a held-out photograph may have). Returns float32 CHW in [0, 1]."""

    def __init__(self, images: ImageSet, size: int, length: int = 1 << 22, seed: int = 0, flip: bool = True,
                 scale: tuple[float, float] | None = None, shuffle_channels: bool = False):
        self.images, self.size, self.length, self.seed, self.flip = images, size, length, seed, flip
        self.shuffle_channels = shuffle_channels
        self.scale = check_scale(scale)
        self.sources = [reduced(img, size, self.scale) for img in images.images]
        self.weights = torch.full((len(images),), 1.0 / len(images), dtype=torch.float64)

    def __len__(self):
        return self.length

    def item(self, i: int) -> tuple[torch.Tensor, int]:
        """(crop, index of its source image)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        k = int(torch.multinomial(self.weights, 1, generator=gen))
        crop = _crop(self.sources[k], self.size, gen, self.flip, self.scale)
        if self.shuffle_channels:
            crop = crop[torch.randperm(3, generator=gen)]
        return crop, k

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.item(i)[0]


def heldout_crops(images: ImageSet, size: int, n: int, seed: int = 1234,
                  scale: tuple[float, float] | None = None) -> torch.Tensor:
    """n fixed crops [n, 3, size, size] spread round-robin over the held-out images, no flips (scale: as _crop)."""
    gen = torch.Generator().manual_seed(seed)
    scale = check_scale(scale)
    sources = [reduced(img, size, scale) for img in images.images]
    return torch.stack([_crop(sources[i % len(sources)], size, gen, False, scale) for i in range(n)])


def check_scale(scale) -> tuple[float, float] | None:
    """None, or (lo, hi) with 0 < lo <= hi <= 1 (fractions of an image's shorter side)."""
    if scale is None:
        return None
    lo, hi = (float(v) for v in scale)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop scale must be (lo, hi) with 0 < lo <= hi <= 1, got {scale!r}")
    return lo, hi


class StepBatches:
    """Per-rank index batches for steps start, start+1, ... of a run with global batch size `global_batch`.

    Built on DistributedSampler (shuffle with seed + epoch; rank r takes every world-th index), so the union
    of the ranks' batches at a step is the batch one process with the global batch size would take. Starting
    at any step skips straight there, which is what makes resume exact."""

    def __init__(self, dataset_len: int, global_batch: int, rank: int = 0, world: int = 1, seed: int = 0,
                 start_step: int = 0):
        from torch.utils.data import DistributedSampler

        if global_batch % world:
            raise ValueError(f"global batch {global_batch} must be divisible by the number of processes {world}")
        self.local = global_batch // world
        self.sampler = DistributedSampler(range(dataset_len), num_replicas=world, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.per_epoch = len(self.sampler) // self.local
        if self.per_epoch == 0:
            raise ValueError(f"dataset of {dataset_len} samples is smaller than one global batch {global_batch}")
        self.step = start_step

    def __iter__(self):
        while True:
            epoch, offset = divmod(self.step, self.per_epoch)
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for b in range(offset, self.per_epoch):
                yield indices[b * self.local:(b + 1) * self.local]
                self.step += 1
