"""Token reduction on whole models (random weights at real sizes): imtok's patches vs the official ones vs none.

Rows (full mode; quick mode runs the same code on small configs):
  tomesd      SD-1.5-sized diffusers UNet2DConditionModel, one denoising step at a 64 x 64 latent (512 px), B=2,
              ratio 0.5: imtok.reduction.apply_tomesd vs PyPI tomesd 0.1.3 (same merges) and vs no merging
  ToMe        timm ViT-B/16 @224, r = 13: imtok.reduction.apply_tome vs the official ToMe patch (when the
              `tome` package of facebookresearch/ToMe is importable) and vs the unmerged timm model (SDPA)
  FasterVLM   transformers CLIP-L/336 vision tower (24 layers, 577 tokens), keep 25 %: imtok.reduction.fastervlm
              vs the anchor's output_attentions=True (eager attention, every map) + top-k; time and peak memory
Variants of one model run interleaved (_common.interleaved_runs) so a busy host slows them alike; each row reports
the median and the spread (min-max) of every variant, and the share of the patched step spent in the merges
(matching, merge, unmerge) and in attention, measured in one separate instrumented call.

    python -m benchmarks.bench_reduction [--quick] [--device cpu|cuda] [--out bench_out/reduction]
"""
import contextlib
import statistics
import time

import torch

from ._common import add_speedup, add_times, interleaved_runs, load_1m, main, peak_extra_mb, sync


def _interleaved(variants, device, reps, warmup=1):
    """variants: {name: callable or (enter, call, leave)} -> {name: {"wall_ms": [...], "cpu_ms": [...]},
    "load_1m": [before, after]}: on a shared CPU host the process CPU time (all threads of this process) is the steadier figure, wall
    time the one a user sees."""
    before = load_1m()
    runs = interleaved_runs(variants.values(), device, warmup, reps, max_seconds=None)
    return {**dict(zip(variants, runs)), "load_1m": [before, load_1m()]}


def _row(family, op, shape, device, ours, base, load, notes=""):
    cpu = "process CPU time {:.0f} vs {:.0f} ms ({:.2f}x)".format(
        statistics.median(ours["cpu_ms"]), statistics.median(base["cpu_ms"]),
        statistics.median(base["cpu_ms"]) / statistics.median(ours["cpu_ms"]))
    row = {"family": family, "op": op, "shape": shape, "device": str(device), "fused_peak_mb": None,
           "ref_peak_mb": None, "notes": "; ".join(n for n in (notes, cpu) if n), "load_1m": load}
    add_times(row, "fused", ours["wall_ms"])
    add_times(row, "ref", base["wall_ms"])
    add_speedup(row, ours["wall_ms"], base["wall_ms"])
    return row


class _Stopwatch:
    """Accumulates wall time of wrapped callables (one instrumented call; device synced around each)."""

    def __init__(self, device):
        self.device, self.ms = device, {}

    def wrap(self, key, fn):
        def timed(*args, **kwargs):
            sync(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            self.ms[key] = self.ms.get(key, 0.0) + (time.perf_counter() - t0) * 1e3
            return out
        return timed

    def wrap_merging(self, key, matching):
        """Time a (merge, unmerge) factory and every call of the functions it returns."""
        def timed_matching(*args, **kwargs):
            m, u = self.wrap(key, matching)(*args, **kwargs)
            return self.wrap(key, m), self.wrap(key, u)
        return timed_matching

    @contextlib.contextmanager
    def patched(self, obj, name, key, merging=False):
        orig = getattr(obj, name)
        setattr(obj, name, self.wrap_merging(key, orig) if merging else self.wrap(key, orig))
        try:
            yield
        finally:
            setattr(obj, name, orig)


def _attention_hooks(modules, watch):
    """Time the forward of every module in `modules` (the attention layers) with pre/post hooks."""
    starts, handles = {}, []

    def pre(mod, args):
        sync(watch.device)
        starts[id(mod)] = time.perf_counter()

    def post(mod, args, out):
        sync(watch.device)
        watch.ms["attention"] = watch.ms.get("attention", 0.0) + (time.perf_counter() - starts[id(mod)]) * 1e3

    for m in modules:
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return handles


def _shares(watch, total_ms):
    return ", ".join(f"{k} {100 * v / total_ms:.0f}%" for k, v in sorted(watch.ms.items()))


# ---- tomesd on a diffusers UNet --------------------------------------------------------------------------------
def _tomesd_rows(device, quick, reps):
    try:
        import diffusers
        import tomesd
    except ImportError as e:
        return [{"family": "reduction", "op": "tomesd UNet step", "shape": "-", "device": str(device),
                 "notes": f"skipped: {e.name} is not installed"}]
    from imtok.reduction import apply_tomesd, remove_tomesd
    from imtok_cuda import merge as fused_merge  # imtok's tomesd looks its matching up here at call time

    torch.manual_seed(0)
    if quick:
        cfg = dict(sample_size=32, block_out_channels=(32, 64, 64, 64), layers_per_block=1, cross_attention_dim=64,
                   attention_head_dim=8)
        hw, ctx_dim, label = 32, 64, "small UNet (32-64 ch) 32x32 latent"
    else:  # Stable Diffusion 1.5's UNet: diffusers' defaults with a 768-wide text context
        cfg = dict(sample_size=64, cross_attention_dim=768)
        hw, ctx_dim, label = 64, 768, "SD-1.5 UNet (860M params) 64x64 latent (512 px)"
    unet = diffusers.UNet2DConditionModel(**cfg).to(device).eval()
    B = 2
    x = torch.randn(B, 4, hw, hw, device=device)
    t = torch.tensor(500, device=device)
    ctx = torch.randn(B, 77, ctx_dim, device=device)

    def step():
        with torch.no_grad():
            return unet(x, t, encoder_hidden_states=ctx).sample

    nothing = lambda: None  # noqa: E731
    variants = {
        "imtok": (lambda: apply_tomesd(unet, ratio=0.5), step, lambda: remove_tomesd(unet)),
        "tomesd": (lambda: tomesd.apply_patch(unet, ratio=0.5), step, lambda: tomesd.remove_patch(unet)),
        "none": (nothing, step, nothing),
    }
    times = _interleaved(variants, device, reps)
    attn1 = [m.attn1 for m in unet.modules() if type(m).__name__.endswith("BasicTransformerBlock")]
    shares = {}
    for name, factory_owner, factory_name in (("imtok", fused_merge, "bipartite_soft_matching_random2d"),
                                              ("tomesd", tomesd.merge, "bipartite_soft_matching_random2d")):
        watch = _Stopwatch(device)
        variants[name][0]()
        handles = _attention_hooks(attn1, watch)
        with watch.patched(factory_owner, factory_name, "merging", merging=True):
            t0 = time.perf_counter()
            step()
            total = (time.perf_counter() - t0) * 1e3
        for h in handles:
            h.remove()
        variants[name][2]()
        shares[name] = _shares(watch, total)
    shape = f"{label} B={B} ratio 0.5"
    return [
        _row("reduction", "tomesd UNet step: imtok vs PyPI tomesd 0.1.3", shape, device, times["imtok"],
             times["tomesd"], times["load_1m"],
             "share of the step in self-attention (attn1) / merging: imtok {}; tomesd {}".format(
                 shares["imtok"], shares["tomesd"])),
        _row("reduction", "tomesd UNet step: imtok vs no merging", shape, device, times["imtok"], times["none"],
             times["load_1m"]),
    ]


# ---- ToMe on a timm ViT ----------------------------------------------------------------------------------------
def _tome_rows(device, quick, reps):
    try:
        import timm
    except ImportError:
        return [{"family": "reduction", "op": "ToMe ViT", "shape": "-", "device": str(device),
                 "notes": "skipped: timm is not installed"}]
    try:
        import tome as official
    except ImportError:
        official = None
    import importlib

    from imtok.reduction import apply_tome, remove_tome
    from imtok.reduction import tome as ours_mod

    layer_mod = importlib.import_module("imtok.layers.attention")  # self_attention looks `attention` up here

    torch.manual_seed(0)
    if quick:
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=128)
        B, size, r, label = 8, 128, 8, "ViT-Ti/16 @128 (65 tokens)"
    else:
        model = timm.create_model("vit_base_patch16_224", pretrained=False)
        B, size, r, label = (64 if str(device).startswith("cuda") else 8), 224, 13, "ViT-B/16 @224 (197 tokens)"
    model = model.to(device).eval()
    img = torch.randn(B, 3, size, size, device=device)
    orig_classes = {m: type(m) for m in model.modules()}

    def call():
        with torch.no_grad():
            return model(img)

    def unpatch_official():
        for m, cls in orig_classes.items():
            m.__class__ = cls
        for key in ("r", "_tome_info"):
            for m in model.modules():
                m.__dict__.pop(key, None)

    def patch_official():
        official.patch.timm(model)
        model.r = r

    nothing = lambda: None  # noqa: E731
    variants = {"imtok": (lambda: apply_tome(model, r=r), call, lambda: remove_tome(model)),
                "timm": (nothing, call, nothing)}
    if official is not None:
        variants["official"] = (patch_official, call, unpatch_official)
    times = _interleaved(variants, device, reps)

    watch = _Stopwatch(device)
    apply_tome(model, r=r)
    with watch.patched(layer_mod, "attention", "attention core (softmax(qk^T)v)"), \
            watch.patched(ours_mod, "_merge_step", "merging"):
        t0 = time.perf_counter()
        call()
        total = (time.perf_counter() - t0) * 1e3
    remove_tome(model)
    shares = _shares(watch, total)
    shape = f"{label} B={B} r={r}"
    rows = [_row("reduction", "ToMe ViT: imtok vs unmerged timm (SDPA)", shape, device, times["imtok"],
                 times["timm"], times["load_1m"], f"imtok step: {shares}; img/s {B / statistics.median(times['timm']['wall_ms']) * 1e3:.1f} -> "
                                f"{B / statistics.median(times['imtok']['wall_ms']) * 1e3:.1f}")]
    if official is not None:
        rows.append(_row("reduction", "ToMe ViT: imtok vs official ToMe patch", shape, device, times["imtok"],
                         times["official"], times["load_1m"], "official: explicit softmax attention, torch gather/scatter merges"))
    else:
        rows.append({"family": "reduction", "op": "ToMe ViT: imtok vs official ToMe patch", "shape": shape,
                     "device": str(device), "notes": "skipped: facebookresearch/ToMe (`tome`) is not importable"})
    return rows


# ---- FasterVLM on a CLIP vision tower --------------------------------------------------------------------------
def _fastervlm_rows(device, quick, reps):
    try:
        import transformers
    except ImportError:
        return [{"family": "reduction", "op": "FasterVLM", "shape": "-", "device": str(device),
                 "notes": "skipped: transformers is not installed"}]
    from imtok.reduction import fastervlm

    torch.manual_seed(0)
    if quick:
        cfg = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8,
                   image_size=224, patch_size=14)
        B, label = 1, "CLIP-ish tower 256 wide, 6 layers, 257 tokens"
    else:  # openai/clip-vit-large-patch14-336, LLaVA-1.5's tower
        cfg = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   image_size=336, patch_size=14)
        B, label = 1, "CLIP-L/336 tower (24 layers, 577 tokens)"
    config = transformers.CLIPVisionConfig(**cfg)
    config._attn_implementation = "eager"  # what output_attentions needs (the anchor's path)
    model = transformers.CLIPVisionModel(config).to(device).eval()
    pixels = torch.randn(B, 3, cfg["image_size"], cfg["image_size"], device=device)
    num_patches = (cfg["image_size"] // cfg["patch_size"]) ** 2
    k = num_patches // 4

    def ours():
        with torch.no_grad():
            return fastervlm(model, pixels, keep=k).features

    def anchor():
        with torch.no_grad():
            out = model(pixels, output_attentions=True, output_hidden_states=True)
            feats = out.hidden_states[-2][:, 1:]
            scores = out.attentions[-2][:, :, 0, 1:].mean(1)
            idx = scores.topk(k, dim=1).indices.sort(dim=1).values
            return feats.gather(1, idx[..., None].expand(-1, -1, feats.shape[-1]))

    times = _interleaved({"imtok": ours, "anchor": anchor}, device, reps)
    mem_ours, mem_anchor = peak_extra_mb(ours, device), peak_extra_mb(anchor, device)
    row = _row("reduction", "FasterVLM keep 25%: imtok (fused CLS row) vs output_attentions + top-k",
               f"{label} B={B} keep {k}/{num_patches}", device, times["imtok"], times["anchor"], times["load_1m"],
               "imtok skips the layers after the feature layer and runs SDPA elsewhere; the anchor runs eager "
               "attention in every layer and returns every map")
    row["fused_peak_mb"], row["ref_peak_mb"] = mem_ours, mem_anchor
    row["mem_ratio"] = mem_anchor / max(mem_ours, 0.1)
    return [row]


def run(device="cpu", quick=False):
    reps = 2 if quick else 3
    return (_tomesd_rows(device, quick, 2) + _tome_rows(device, quick, reps)
            + _fastervlm_rows(device, quick, reps))


if __name__ == "__main__":
    main(run)
