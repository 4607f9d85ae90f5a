"""imtok.train: data loading and its errors, the schedule, checkpoints, exact resume, gradient accumulation,
DDP with 2 gloo processes against one process with the doubled batch, and loss going down on real photos."""
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from imtok.train import DataError, RandomCrops, TokenizerTrainer, TrainConfig, heldout_crops, lr_at, split_images
from imtok.train import checkpoint as ckpt
from imtok.train.data import StepBatches

from _tiny_tokenizer import Tiny1D, TinyVQ


def _write_png(path, h, w, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def photo_data():
    return split_images(None, 16)


def _cfg(tmp_path, **kw):
    base = dict(out=str(tmp_path), steps=6, batch_size=8, lr=3e-3, warmup=2, crop=16, heldout=8, log_every=1,
                eval_every=0, save_every=0, progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _metrics(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as fh:
        return [json.loads(l) for l in fh if '"loss"' in l]


# ---- data ---------------------------------------------------------------------------------------------------
def test_builtin_split_is_by_image_and_deterministic(photo_data):
    train, held = photo_data
    assert len(train) >= 10 and len(held) >= 2
    assert not set(train.paths) & set(held.paths)
    ds = RandomCrops(train, 16, seed=3)
    a, b = ds[5], ds[5]
    assert a.shape == (3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    assert not torch.equal(ds[5], ds[6])
    assert torch.equal(heldout_crops(held, 16, 4), heldout_crops(held, 16, 4))


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no image files"):
        split_images(str(empty), 16)
    with pytest.raises(DataError, match="does not exist"):
        split_images(str(tmp_path / "missing"), 16)
    small = tmp_path / "small"
    (small / "sub").mkdir(parents=True)
    for i in range(3):
        _write_png(small / "sub" / f"{i}.png", 10, 12, i)
    with pytest.raises(DataError, match=r"smaller than the 16x16 crop"):
        split_images(str(small), 16)


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    for i in range(6):
        _write_png(tmp_path / f"ok{i}.png", 20, 24, i)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "broken2.png").write_bytes(b"\x89PNG garbage")
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        train, held = split_images(str(tmp_path), 16)
    assert len(train) + len(held) == 6 and len(held) >= 1
    summary = train.summary() + held.summary()
    assert "unreadable" in summary


def test_scaled_crops_show_a_fraction_of_the_photo(tmp_path):
    """crop_scale (1, 1) of a square photo is the whole photo made crop-sized: a horizontal ramp stays a ramp."""
    from PIL import Image

    ramp = np.tile(np.linspace(0, 255, 400)[None, :, None], (400, 1, 3)).round().astype(np.uint8)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    Image.fromarray(ramp[:, ::-1].copy()).save(tmp_path / "ramp2.png")
    train, held = split_images(str(tmp_path), 16)
    crops = RandomCrops(train, 16, seed=0, flip=False, scale=(1.0, 1.0))
    expected = (torch.arange(16) + 0.5) / 16
    row = crops[0][0, 8]
    assert torch.allclose(row if row[0] < row[-1] else row.flip(0), expected, atol=0.02)
    half = heldout_crops(held, 16, 4, scale=(0.5, 0.5))  # half the width: a ramp of slope 2 per crop width
    slope = (half[:, 0, 8, -1] - half[:, 0, 8, 0]).abs()
    assert torch.allclose(slope, torch.full((4,), 0.5 * 15 / 16), atol=0.03)
    assert torch.equal(half, heldout_crops(held, 16, 4, scale=(0.5, 0.5)))
    with pytest.raises(ValueError, match="crop scale"):
        RandomCrops(train, 16, scale=(0.5, 1.5))


def test_shuffle_channels_permutes_the_same_crop(photo_data):
    plain = RandomCrops(photo_data[0], 16, seed=3)
    shuffled = RandomCrops(photo_data[0], 16, seed=3, shuffle_channels=True)
    moved = 0
    for i in range(24):
        a, b = plain[i], shuffled[i]
        perm = [next(c for c in range(3) if torch.equal(b[k], a[c])) for k in range(3)]  # raises if not a permutation
        moved += perm != [0, 1, 2] and not torch.equal(a, b)
    assert moved > 0


def test_step_batches_union_over_ranks_is_the_global_batch():
    one = iter(StepBatches(1000, 8, seed=1))
    r0, r1 = iter(StepBatches(1000, 8, 0, 2, seed=1)), iter(StepBatches(1000, 8, 1, 2, seed=1))
    for _ in range(3):
        assert sorted(next(one)) == sorted(next(r0) + next(r1))
    later = iter(StepBatches(1000, 8, seed=1, start_step=2))
    full = iter(StepBatches(1000, 8, seed=1))
    [next(full) for _ in range(2)]
    assert next(later) == next(full)


# ---- schedule and checkpoints -------------------------------------------------------------------------------
def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half way through the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)


def test_optimizer_roundtrip(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    t, meta = ckpt.optimizer_to_flat(opt, "optim")
    ckpt.save(str(tmp_path / "c.safetensors"), t, {"optim": meta})
    t2, meta2 = ckpt.load(str(tmp_path / "c.safetensors"))
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.5)
    ckpt.optimizer_from_flat(opt2, "optim", t2, meta2["optim"])
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for name in a["state"][k]:
            assert torch.equal(a["state"][k][name], b["state"][k][name])


# ---- training -----------------------------------------------------------------------------------------------
def test_loss_decreases_on_photos(tmp_path, photo_data):
    torch.manual_seed(0)
    cfg = _cfg(tmp_path, steps=40, batch_size=16, lr=5e-3, warmup=5, eval_every=40)
    tr = TokenizerTrainer(TinyVQ(), cfg, data=photo_data).fit()
    rows = _metrics(tmp_path)
    first = np.mean([r["rec_loss"] for r in rows[:5]])
    last = np.mean([r["rec_loss"] for r in rows[-5:]])
    assert last < 0.7 * first, (first, last)
    assert os.path.exists(tmp_path / "heldout-000040.png")
    ev = [json.loads(l) for l in open(tmp_path / "metrics.jsonl") if "eval/psnr" in l]
    assert ev and ev[-1]["eval/psnr"] > 12
    tr.export(str(tmp_path / "model"))
    assert os.path.exists(tmp_path / "model" / "model.safetensors")


def _weights(tr):
    return {**{"m." + k: v for k, v in tr.model.state_dict().items()},
            **{"e." + k: v for k, v in tr.ema.state_dict().items()},
            **({"c." + k: v for k, v in tr.critic.state_dict().items()} if tr.critic is not None else {})}


def test_resume_is_bit_exact(tmp_path, photo_data):
    """k steps, save, a fresh process-like restart from the checkpoint, k more == 2k steps straight."""
    kw = dict(steps=6, gan_weight=0.1, lecam_weight=0.01, gan_start=2, perturb_alpha=0.5, perturb_beta=0.5,
              perturb_delta=4, tail_drop="on", tail_drop_start=2, save_every=0, codebook_restart=2,
              quantizer_warmup=3)  # the k-means codebook is made right after the resume

    def make(out):
        torch.manual_seed(0)
        return TokenizerTrainer(Tiny1D(size=16), _cfg(out, **kw), data=photo_data)

    straight = make(tmp_path / "a").fit()
    make(tmp_path / "b").fit(stop_at=3)  # k = 3; lr and perturbation schedules still run to step 6
    torch.manual_seed(123)  # the restart must not depend on the state of the process
    resumed = make(tmp_path / "b").fit(resume=True)
    assert resumed.step == 6
    wa, wb = _weights(straight), _weights(resumed)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    la = [r["loss"] for r in _metrics(tmp_path / "a")]
    lb = [r["loss"] for r in _metrics(tmp_path / "b")]
    assert la[3:] == lb[-3:]


def test_codebook_restart_moves_unused_codes_onto_encoder_outputs(tmp_path, photo_data):
    torch.manual_seed(0)
    tr = TokenizerTrainer(TinyVQ(), _cfg(tmp_path, codebook_restart=1000), data=photo_data)
    batch = next(iter(tr.batches(0)))
    tr.train_step(batch, 0)
    dead = (tr.restart.counts["quantize"] == 0).nonzero().squeeze(1)
    assert 0 < len(dead) < 64
    z = tr.restart.latest["quantize"].reshape(-1, 8)
    assert tr.restart.maybe_restart(999) == len(dead)
    moved = tr.model.quantize.embed[dead].detach()
    nearest_z = torch.cdist(moved, z).min(1).values
    assert float(nearest_z.max()) < 0.05 * float(z.std()) * z.shape[1] ** 0.5
    assert torch.equal(tr.ema.quantize.embed[dead], moved)
    state = tr.opt.state[tr.model.quantize.embed]
    assert not state["exp_avg"][dead].any() and not state["exp_avg_sq"][dead].any()
    assert not tr.restart.counts["quantize"].any()


def test_kmeans_finds_separated_clusters():
    from imtok.train.warmup import kmeans

    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(200, 2, generator=gen)
    found = kmeans(points, 4, 10, gen, spherical=False).float()
    err = torch.cdist(found, centres).min(1).values
    assert float(err.max()) < 0.05 and len({int(i) for i in torch.cdist(found, centres).argmin(1)}) == 4
    unit = kmeans(points[50:] + 1, 3, 10, gen, spherical=True)
    assert torch.allclose(unit.norm(dim=1), torch.ones(3, dtype=unit.dtype))


def test_quantizer_warmup_trains_continuous_then_starts_the_codebook_from_kmeans(tmp_path, photo_data):
    torch.manual_seed(0)
    tr = TokenizerTrainer(TinyVQ(), _cfg(tmp_path, quantizer_warmup=2, codebook_restart=1), data=photo_data)
    batches = iter(tr.batches(0))
    before = tr.model.quantize.embed.detach().clone()
    for step in range(2):
        logs = tr.train_step(next(batches), step)
        assert logs["quantizer_loss"] == 0 and "codes_restarted" not in logs  # no restart while warming up
        grad = tr.model.quantize.embed.grad  # no gradient reaches the bypassed codebook
        assert grad is None or not grad.any()
    x = next(batches)
    z = tr.model.enc(x * 2 - 1).permute(0, 2, 3, 1).reshape(-1, 8).detach()
    with torch.no_grad():  # during the warm-up the decoder sees the encoder's output itself
        assert torch.allclose(tr.model(x)[0], tr.model.decode(tr.model.enc(x * 2 - 1)), atol=1e-6)
    logs = tr.train_step(x, 2)
    assert logs["quantizer_loss"] > 0
    codes = tr.ema.quantize.embed
    # codes are k-means centres of encoder outputs: on the scale of z, and z is close to its nearest code
    assert float(codes.norm(dim=1).mean()) == pytest.approx(float(z.norm(dim=1).mean()), rel=0.5)
    assert float(torch.cdist(z, codes).min(1).values.mean()) < 0.5 * float(torch.cdist(z, before).min(1).values.mean())


def test_tail_drop_starts_at_tail_drop_start(tmp_path, photo_data):
    torch.manual_seed(0)
    tr = TokenizerTrainer(Tiny1D(size=16), _cfg(tmp_path, tail_drop="on", tail_drop_start=2), data=photo_data)
    batches = iter(tr.batches(0))
    seen = []
    for step in range(4):
        tr.train_step(next(batches), step)
        seen.append(torch.cat(tr._lengths))
    assert all(bool((s == 8).all()) for s in seen[:2])  # before the start: every crop decoded from all 8 tokens
    assert any(bool((s < 8).any()) for s in seen[2:]) and all(bool(((s >= 1) & (s <= 8)).all()) for s in seen)


def test_grad_accumulation_matches_full_batch(tmp_path, photo_data):
    def run(accum, out):
        torch.manual_seed(0)
        return TokenizerTrainer(TinyVQ(), _cfg(out, steps=3, grad_accum=accum), data=photo_data).fit()

    a, b = run(1, tmp_path / "a"), run(2, tmp_path / "b")
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(va, vb, atol=2e-5, rtol=1e-4), k


def test_bad_config(tmp_path, photo_data):
    with pytest.raises(ValueError, match="divisible"):
        TokenizerTrainer(TinyVQ(), _cfg(tmp_path, batch_size=6, grad_accum=4), data=photo_data)
    with pytest.raises(ValueError, match="1D tokenizer"):
        TokenizerTrainer(TinyVQ(), _cfg(tmp_path, tail_drop="on"), data=photo_data)


# ---- DDP ----------------------------------------------------------------------------------------------------
# codebook restarts at steps 3 and 5 (after the k-means codebook of step 2) pick encoder outputs of the whole
# global batch, which the 2 ranks gather
DDP_CONFIG = dict(batch_size=8, tail_drop="on", gan_weight=0.1, lecam_weight=0.01, quantizer_warmup=2,
                  codebook_restart=2)


def _ddp_worker(rank, world, port, out, result_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        data = split_images(None, 16)
        tr = TokenizerTrainer(Tiny1D(size=16), _cfg(out, **DDP_CONFIG, save_every=6), data=data).fit()
        if rank == 0:
            torch.save({k: v.clone() for k, v in tr.model.state_dict().items()}, result_file)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tmp_path, photo_data):
    torch.manual_seed(0)
    single = TokenizerTrainer(Tiny1D(size=16), _cfg(tmp_path / "one", **DDP_CONFIG), data=photo_data).fit()
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path / "two"), str(tmp_path / "w.pt")),
                       nprocs=2, join=True, start_method="spawn")
    l1 = [r["loss"] for r in _metrics(tmp_path / "one")]
    l2 = [r["loss"] for r in _metrics(tmp_path / "two")]
    assert np.allclose(l1, l2, rtol=1e-4, atol=1e-5), (l1, l2)
    w2 = torch.load(tmp_path / "w.pt")
    for k, v in single.model.state_dict().items():
        assert torch.allclose(v, w2[k], rtol=1e-3, atol=1e-5), k
    # the 2-process checkpoint holds both ranks' RNG streams
    tensors, meta = ckpt.load(ckpt.latest(str(tmp_path / "two")))
    assert meta["world"] == 2 and "rng.torch.r1" in tensors
