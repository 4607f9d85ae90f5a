"""The CLI end to end with a tiny budget: `imtok demo`, and `imtok train` + `imtok eval` + `imtok generate`."""
import json
import os

import pytest

from imtok.cli import main

pytest.importorskip("imtok.tokenizers")


def test_demo_tiny_budget(tmp_path, capsys):
    out = tmp_path / "demo"
    main(["demo", "--out", str(out), "--steps", "4", "--gen-steps", "3", "--batch-size", "8", "--heldout", "16",
          "--samples", "8", "--gen-pool", "32", "--no-progress"])
    printed = capsys.readouterr().out
    assert "report:" in printed and str(out) in printed
    report = (out / "report.md").read_text()
    assert "| PSNR |" in report and "reconstructions.png" in report and "rate_distortion.png" in report
    # the reference points of the same held-out crops, and how the crops were made
    assert "| mean colour (no tokens) | 3 floats |" in report and "| 4x4 average, bilinear (no tokens) |" in report
    assert "0.5 to 1) of the photo's shorter side, resized to 32x32" in report
    for f in ("reconstructions.png", "rate_distortion.png", "metrics.json", "tokenizer/model/config.json"):
        assert os.path.getsize(out / f) > 0, f
    m = json.loads((out / "metrics.json").read_text())
    assert m["eval"]["baselines"]["mean colour"]["psnr"] < 24  # crops with content, not flat patches
    assert m["eval"]["num_images"] == 16 and m["eval"]["rate_distortion"][-1][0] == m["eval"]["tokens_per_image"]
    if "skipped" not in m["generator"]:
        assert os.path.getsize(out / "samples.png") > 0 and "samples.png" in report


def test_train_eval_generate_cli(tmp_path, capsys):
    run = tmp_path / "tok"
    common = ["--crop", "32", "--batch-size", "4", "--no-progress", "--warmup", "1"]
    model_args = ["--model-arg", "num_latent_tokens=16", "--model-arg", "entropy_loss_ratio=0.1"]
    main(["train", "--model", "titok-tiny", "--out", str(run), "--steps", "2", "--save-every", "1", *model_args,
          *common])
    assert json.loads((run / "model" / "config.json").read_text())["config"]["num_latent_tokens"] == 16
    assert os.path.exists(run / "checkpoint-2.safetensors") and os.path.exists(run / "model" / "config.json")
    main(["train", "--model", "titok-tiny", "--out", str(run), "--steps", "3", "--resume", *model_args, *common])
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert rows[-1]["step"] == 3
    ev = tmp_path / "eval"
    main(["eval", "--tokenizer", str(run / "model"), "--num", "8", "--perturb-alpha", "0.5", "--out", str(ev)])
    res = json.loads((ev / "metrics.json").read_text())
    assert res["num_images"] == 8 and "robustness" in res and "rate_distortion" in res
    assert "FID skipped" in capsys.readouterr().out or "fid" in res
    scaled = tmp_path / "eval_scaled"
    main(["eval", "--tokenizer", str(run / "model"), "--num", "8", "--perturb-alpha", "", "--crop-scale", "0.5,1",
          "--out", str(scaled)])
    res_scaled = json.loads((scaled / "metrics.json").read_text())
    # crops of half a photo and more show content: a different (lower) mean-colour baseline than flat full-res crops
    assert res_scaled["baselines"]["mean colour"]["psnr"] != res["baselines"]["mean colour"]["psnr"]
    pytest.importorskip("imtok.generators")
    gen = tmp_path / "gen"
    main(["train", "--model", "maskgit-tiny", "--tokenizer", str(run / "model"), "--out", str(gen), "--steps", "2",
          "--pool", "16", *common])
    main(["generate", "--generator", str(gen / "model"), "--tokenizer", str(run / "model"), "--num", "8",
          "--out", str(tmp_path / "s.png")])
    assert os.path.getsize(tmp_path / "s.png") > 0


def test_generator_on_2d_tokens(tmp_path):
    """A GPT on a VQGAN's token raster: the sequence length and 2D RoPE come from the tokenizer."""
    import torch

    generators = pytest.importorskip("imtok.generators")
    from imtok import tokenizers
    from imtok.train import TrainConfig, split_images
    from imtok.train.generator import GeneratorTrainer, class_labels, generator_overrides, sample_images

    torch.manual_seed(0)
    tok = tokenizers.create("vqgan-tiny")
    data = split_images(None, 16)
    labels = class_labels(data[0])
    over = generator_overrides("llamagen-gpt-tiny", tok, labels[1], 16)
    assert over["block_size"] == 16 and over["rope"] == "2d"
    gen = generators.create("llamagen-gpt-tiny", **over)
    cfg = TrainConfig(out=str(tmp_path), steps=2, batch_size=4, crop=16, heldout=0, progress=False, save_every=0,
                      eval_every=0, warmup=1)
    tr = GeneratorTrainer(gen, tok, cfg, data, labels=labels, pool=8).fit()
    assert tr.tokens.shape == (8, 16)
    images, _ = sample_images(tr.ema, tok, torch.arange(2))
    assert images.shape == (2, 3, 16, 16)
