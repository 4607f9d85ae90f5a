"""GPSToken (imtok.tokenizers.gpstoken): registry, the partition as the starting geometry, the official geometry
refinement formula restated, fused == reference renderer, gradients, save/load, input checks. Tiny configs."""
import json

import pytest
import torch
import torch.nn.functional as F

import imtok
import imtok.tokenizers as T
from _tokenizer_checks import assert_save_load_round_trip
import imtok_cuda.splat as S
from imtok.tokenizers.gpstoken import GPSTokenConfig, merge_patch_tokens, partition_boxes, split_patch_tokens

pytest.importorskip("torchvision", reason="GPSToken's encoder needs torchvision (the [gpstoken] extra)")


def tiny_gps(**kw):
    cfg = dict(image_size=16, num_tokens=6, texture_channels=4, enc_width=32, enc_depth=2, enc_heads=2,
               roi_size=2, pre_channels=32, render_size=8, dec_ch=32, dec_ch_mult=(1, 2), dec_num_res_blocks=1,
               partition_minhw=2)
    cfg.update(kw)
    return T.GPSToken(GPSTokenConfig(**cfg))


def randomize_geometry_head(tok, scale=0.3):
    """The geometry head starts at zero (tokens = the partition); random weights move the Gaussians."""
    with torch.no_grad():
        tok.to_gps[0].weight.normal_(0, scale / tok.config.enc_width ** 0.5)
        tok.to_gps[0].bias.normal_(0, scale)
    return tok


def images(b=3, size=16):
    torch.manual_seed(b * 100 + size)
    return torch.rand(b, 3, size, size)


def test_registry_published_and_tiny_sizes():
    names = T.available()
    for n in ("gpstoken-s64", "gpstoken-m128", "gpstoken-l256", "gpstoken-tiny"):
        assert n in names and names[n]
    for name, n, c in (("gpstoken-s64", 64, 16), ("gpstoken-m128", 128, 16), ("gpstoken-l256", 256, 32)):
        fam, fields, _ = T.REGISTRY[name]
        cfg = T.FAMILIES[fam].config_class(**fields)
        assert (cfg.num_tokens, cfg.texture_channels, cfg.enc_depth, cfg.enc_width, cfg.roi_size, cfg.render_size,
                cfg.box_sigma, cfg.dec_ch, cfg.dec_ch_mult, cfg.image_size) == (n, c, 30, 512, 8, 64, 3.0, 128,
                                                                               (1, 2, 4), 256)
    tok = T.create("gpstoken-tiny").eval()
    x = images(2, 32)
    with torch.no_grad():
        recon, info = tok(x)
    assert recon.shape == x.shape and recon.dtype == torch.float32
    assert "min_encoding_indices" not in info and info["init_geometry"].shape == (2, 16, 5)


def test_partition_boxes_tile_the_image():
    x = images(2, 32)
    g = S.entropy_partition(x * 2 - 1, 16, 4)
    boxes = partition_boxes(g, 32, 32).long()
    for b in range(2):
        cover = torch.zeros(32, 32, dtype=torch.long)
        for x0, y0, x1, y1 in boxes[b].tolist():
            cover[y0:y1 + 1, x0:x1 + 1] += 1
        assert torch.equal(cover, torch.ones_like(cover))  # every pixel in exactly one region


def test_encoder_starts_at_the_partition_and_refines_with_the_official_formula():
    tok = tiny_gps().eval()
    x = images(2)
    with torch.no_grad():
        z, info = tok.encode(x)
    init = S.entropy_partition(x * 2 - 1, 6, 2)
    assert torch.equal(info["init_geometry"], init)
    torch.testing.assert_close(z[..., :5], init, rtol=0, atol=1e-6)  # zero-initialised output layer

    randomize_geometry_head(tok)
    with torch.no_grad():
        z, _ = tok.encode(x, init_geometry=init)
        h = tok.gps_embed.weight + tok.gps_embed_layer(init)
        features = tok.preprocess_img(x * 2 - 1)
        from torchvision.ops import roi_align  # the official RoIAlign(8, 1.0, -1, aligned=True), on pixel boxes
        boxes = partition_boxes(init, 16, 16).reshape(-1, 4)
        rois = torch.cat([torch.arange(2.0).repeat_interleave(6)[:, None], boxes], 1)
        rois = tok.roialign_layer(roi_align(features, rois, (2, 2), 1.0, -1, True)).flatten(2)
        for blk in tok.attnblocks:
            h = blk(h, rois)
        delta = tok.to_gps[0](h)
    # GPSToken: sigma = 1 / (1 + exp(-(-log(1 / init - 1) + delta))); rho, mu = 2 / (1 + exp(...)) - 1
    sigma = 1 / (1 + torch.exp(-(-torch.log(1 / init[..., :2] - 1) + delta[..., :2])))
    unit = 2 / (1 + torch.exp(-(-torch.log(2 / (1 + init[..., 2:]) - 1) + delta[..., 2:]))) - 1
    torch.testing.assert_close(z[..., :5], torch.cat([sigma, unit], -1), rtol=1e-5, atol=1e-6)
    assert (z[..., :5] - init).abs().max() > 1e-2


def test_decode_is_the_cnn_decoder_on_the_splat():
    tok = randomize_geometry_head(tiny_gps()).eval()
    with torch.no_grad():
        z, _ = tok.encode(images(2))
        from imtok_cuda.reference.splat import render_direct
        rendered = render_direct(z[..., :5], z[..., 5:], (8, 8), box_sigma=3.0).float()
        torch.testing.assert_close(tok.render(z), rendered, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tok.decode(z), (tok.decoder(rendered) + 1) / 2, rtol=1e-4, atol=1e-5)
        # unordered tokens: a permutation decodes to the same image
        torch.testing.assert_close(tok.decode(z[:, torch.randperm(6)]), tok.decode(z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vq", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_fused_equals_reference(vq, training):
    tok = randomize_geometry_head(tiny_gps(codebook_size=32 if vq else None)).train(training)
    x = images(3)
    out_f, info_f = tok(x)
    with imtok.use_reference():
        out_r, info_r = tok(x)
    torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-5)
    if vq:
        assert torch.equal(info_f["min_encoding_indices"], info_r["min_encoding_indices"])
        torch.testing.assert_close(info_f["quantizer_loss"], info_r["quantizer_loss"])


def test_reference_switch_reaches_the_renderer(monkeypatch):
    import imtok_cuda.reference.splat as ref

    calls = []
    real = ref.render
    monkeypatch.setattr(ref, "render", lambda *a, **k: calls.append(1) or real(*a, **k))
    tok = tiny_gps().eval()
    with torch.no_grad():
        z, _ = tok.encode(images(1))
        tok.decode(z)
        assert not calls
        with imtok.use_reference():
            tok.decode(z)
    assert calls


@pytest.mark.parametrize("vq", [False, True])
def test_gradients_reach_every_trainable_parameter(vq):
    tok = tiny_gps(codebook_size=32 if vq else None).train()
    x = images(2)
    recon, info = tok(x)
    loss = F.mse_loss(recon, x) + (info["quantizer_loss"] if vq else 0)
    loss.backward()
    missing = [n for n, p in tok.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing


def test_vq_tokens_decode_with_their_geometry():
    tok = randomize_geometry_head(tiny_gps(codebook_size=32)).eval()
    with torch.no_grad():
        z, info = tok.encode(images(2))
        idx = info["min_encoding_indices"]
        assert idx.shape == (2, 6) and idx.dtype == torch.int64
        torch.testing.assert_close(z[..., 5:], tok.quantize.embedding.weight[idx])
        torch.testing.assert_close(tok.decode_tokens(idx, geometry=z[..., :5]), tok.decode(z))


def test_save_load_round_trip_bit_exact(tmp_path):
    tok = randomize_geometry_head(tiny_gps(codebook_size=16))
    assert tok.family == "gpstoken"
    assert type(assert_save_load_round_trip(tok, tmp_path, x=images(2))) is T.GPSToken


def test_bad_input_names_the_argument():
    tok = tiny_gps()
    for size in ((24, 24), (48, 48), (32, 16), (128, 128)):  # only 1, 2 or 4 times image_size, square
        with pytest.raises(ValueError, match=r"x must be 16 x 16 pixels \(or 32 x 32, 64 x 64"):
            tok.encode(torch.rand(1, 3, *size))
    with pytest.raises(ValueError, match=r"x values must be in \[0, 1\]"):
        tok.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
    with pytest.raises(ValueError, match="x must have 3 channels"):
        tok.encode(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"init_geometry must have shape \[B, n\^2 N, 5\] = \[2, 6, 5\]"):
        tok.encode(torch.rand(2, 3, 16, 16), init_geometry=torch.rand(2, 5, 5))
    with pytest.raises(ValueError, match="lengths applies to ordered 1D tokens"):
        tok(torch.rand(1, 3, 16, 16), lengths=3)
    with pytest.raises(ValueError, match=r"z must have shape \[B, n, 5 \+ C\] = \[B, n, 9\]"):
        tok.decode(torch.rand(1, 6, 8))
    with pytest.raises(ValueError, match="geometry is only taken with VQ tokens"):
        tok.decode_tokens(torch.rand(1, 6, 9), geometry=torch.rand(1, 6, 5))
    z = torch.rand(1, 6, 9)
    z[0, 0, 0] = -0.5
    with pytest.raises((ValueError, RuntimeError), match="sigma"):
        tok.decode(z)
    vq = tiny_gps(codebook_size=16)
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 16\)"):
        vq.decode_tokens(torch.full((1, 6), 16), geometry=torch.rand(1, 6, 5))
    with pytest.raises(ValueError, match=r"geometry must have shape \[B, n, 5\]"):
        vq.decode_tokens(torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="render_size"):
        GPSTokenConfig(image_size=256, render_size=32)


# ---- 2x / 4x images: image_size patches, merged tokens, decode(scale=n) --------------------------------------------
def mosaic(tiles, n):
    """[B n^2, 3, s, s] (image-major, tiles row-major) -> [B, 3, n s, n s]."""
    Bp, C, s, _ = tiles.shape
    return tiles.reshape(Bp // (n * n), n, n, C, s, s).permute(0, 3, 1, 4, 2, 5).reshape(-1, C, n * s, n * s)


def merged_by_hand(z, n):
    """Patch tokens [B n^2, N, D] -> [B, n^2 N, D]: patch (i, j) covers x in [-1 + 2 j / n, -1 + 2 (j + 1) / n]
    (y likewise with i) of the image, so a patch coordinate u in [-1, 1] lands at -1 + 2 j / n + (u + 1) / n and
    a width shrinks by n."""
    Bp, N, D = z.shape
    out = torch.empty(Bp // (n * n), n * n * N, D, dtype=z.dtype)
    for r in range(Bp):
        b, p = divmod(r, n * n)
        i, j = divmod(p, n)
        for k in range(N):
            sx, sy, rho, ux, uy = z[r, k, :5].tolist()
            out[b, p * N + k, :5] = torch.tensor([sx / n, sy / n, rho, -1 + 2 * j / n + (ux + 1) / n,
                                                  -1 + 2 * i / n + (uy + 1) / n], dtype=z.dtype)
            out[b, p * N + k, 5:] = z[r, k, 5:]
    return out


@pytest.mark.parametrize("n", [2, 4])
def test_merge_patch_tokens_maps_each_patch_into_its_part_of_the_image(n):
    torch.manual_seed(n)
    z = torch.cat([torch.rand(2 * n * n, 3, 2) * 0.5 + 0.01, torch.rand(2 * n * n, 3, 3) * 1.8 - 0.9,
                   torch.randn(2 * n * n, 3, 4)], -1)
    torch.testing.assert_close(merge_patch_tokens(z, n), merged_by_hand(z, n), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n, batch", [(2, 2), (4, 1)])
def test_mosaic_encodes_to_each_tiles_tokens_merged(n, batch):
    """A mosaic of n x n tiles (different per tile, two mosaics in the batch: the patch offsets must follow each
    image) encodes to the tiles' own tokens, merged; four identical tiles give four shifted copies."""
    tok = randomize_geometry_head(tiny_gps()).eval()
    tiles = images(batch * n * n)
    with torch.no_grad():
        z_tiles, info_tiles = tok.encode(tiles)
        z, info = tok.encode(mosaic(tiles, n))
        z_same, _ = tok.encode(tiles[:1].repeat(1, 1, n, n))
    assert z.shape == (batch, n * n * 6, 9)
    torch.testing.assert_close(info["init_geometry"], info_tiles["init_geometry"].reshape(batch, -1, 5))
    torch.testing.assert_close(z, merged_by_hand(z_tiles, n), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z_same, merged_by_hand(z_tiles[:1].repeat(n * n, 1, 1), n), rtol=1e-5, atol=1e-6)


def test_render_at_scale_2_keeps_patch_tokens_in_their_patch():
    """The exact locality of the merged splat: tokens whose 3-sigma box lies inside their patch write only into
    that patch's quarter of the (2 render_size)^2 map. The decoder is not patch-local (its convolutions cross the
    patch borders, its norm statistics are interpolated between patches and its middle attention sees the whole
    patch), so a decoded patch does not equal the patch decoded alone; tests/fixtures/gpstoken/io_2x checks the
    decoder against the official one."""
    tok = tiny_gps().eval()
    torch.manual_seed(0)
    N = 6
    patch = torch.cat([torch.rand(4, N, 2) * 0.1 + 0.05, torch.rand(4, N, 1) - 0.5,
                       torch.rand(4, N, 2) - 0.5, torch.randn(4, N, 4)], -1)  # |mu| + 3 sigma < 1
    z = merge_patch_tokens(patch, 2)
    with torch.no_grad():
        full = tok.render(z, scale=2)
        assert full.shape == (1, 4, 16, 16)
        for p in range(4):
            alone = tok.render(z[:, p * N:(p + 1) * N], scale=2)
            i, j = divmod(p, 2)
            outside = torch.ones(16, 16, dtype=torch.bool)
            outside[8 * i:8 * i + 8, 8 * j:8 * j + 8] = False
            assert alone[..., outside].abs().max() == 0
            torch.testing.assert_close(alone[..., ~outside], full[..., ~outside], rtol=1e-5, atol=1e-6)


def test_patch_norm_of_identical_patches_is_the_patch_group_norm():
    """Exact property of the per-patch statistics: with identical patches the grid of statistics is constant, its
    bicubic resize too, so every patch is normalised by its own mean and std (DecoderNP's (h - mean) / (std + eps))."""
    from imtok.tokenizers.gpstoken import _patch_group_norm

    tok = randomize_geometry_head(tiny_gps())
    norm = tok.decoder.mid[0].norm1
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        torch.manual_seed(1)
        h = torch.randn(2, norm.num_channels, 4, 4) * 3 + 1
        g = h.reshape(2, 32, -1, 4, 4)
        std, mean = torch.std_mean(g, dim=(2, 3, 4), keepdim=True, correction=0)
        alone = ((g - mean) / (std + norm.eps)).reshape(h.shape) * norm.weight[:, None, None] + norm.bias[:, None, None]
        torch.testing.assert_close(_patch_group_norm(norm, h.repeat(1, 1, 2, 2), 2), alone.repeat(1, 1, 2, 2),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vq, n", [(False, 2), (True, 2), (False, 4)])
def test_scale_n_fused_equals_reference_and_trains(vq, n):
    tok = randomize_geometry_head(tiny_gps(codebook_size=32 if vq else None)).train()
    x = images(2, 16 * n)
    out_f, info_f = tok(x)
    assert out_f.shape == (2, 3, 16 * n, 16 * n) and info_f["init_geometry"].shape == (2, 6 * n * n, 5)
    with imtok.use_reference():
        out_r, info_r = tok(x)
    torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-5)
    if vq:
        assert info_f["min_encoding_indices"].shape == (2, 24)
        assert torch.equal(info_f["min_encoding_indices"], info_r["min_encoding_indices"])
        with torch.no_grad():
            z, info = tok.eval().encode(x)
            torch.testing.assert_close(tok.decode_tokens(info["min_encoding_indices"], geometry=z[..., :5], scale=2),
                                       tok.decode(z, scale=2))
        return
    F.mse_loss(out_f, x).backward()
    assert tok.to_gps[0].weight.grad.abs().sum() > 0 and tok.decoder.conv_in.weight.grad.abs().sum() > 0


def test_per_patch_decode_tiles_the_patches_decoded_alone():
    """decode(scale=n, per_patch=True) (the official script's L256 path) == each tile's tokens decoded alone."""
    tok = randomize_geometry_head(tiny_gps()).eval()
    tiles = images(8)
    with torch.no_grad():
        z_tiles, _ = tok.encode(tiles)
        z, _ = tok.encode(mosaic(tiles, 2))
        torch.testing.assert_close(split_patch_tokens(z, 2), z_tiles, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tok.decode(z, scale=2, per_patch=True), mosaic(tok.decode(z_tiles), 2),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"z.shape\[1\] must be a multiple of n\^2 = 4"):
        tok.decode(z[:, :7], scale=2, per_patch=True)


def test_bad_scale_names_the_argument():
    tok = tiny_gps().eval()
    z = torch.rand(1, 6, 9) * 0.5 + 0.1
    for scale in (3, 0, 8, True, 2.0):
        with pytest.raises(ValueError, match=r"scale must be one of \(1, 2, 4\)"):
            tok.decode(z, scale=scale)


# ---- official checkpoints (tests/fixtures/gpstoken, made by tests/fixtures/make_gpstoken.py) ---------------------
def test_load_official_matches_the_official_model():
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(__file__).parent / "fixtures" / "gpstoken"
    sd = load_file(root / "state_dict.safetensors")
    io = load_file(root / "io.safetensors")
    meta = json.loads((root / "meta.json").read_text())
    # a real checkpoint also holds the preprocessing blocks' unused temb_proj layers: the loader drops them
    for i in (1, 2):
        sd[f"preprocess_img.{i}.temb_proj.weight"] = torch.randn(meta["pre_channels"], 512)
        sd[f"preprocess_img.{i}.temb_proj.bias"] = torch.randn(meta["pre_channels"])
    config = {**meta["config"], "data": {"params": {"adaptive_minhw": meta["adaptive_minhw"]}}}
    tok = T.load_official("gpstoken", sd, config)
    assert not tok.training and tok.config.pre_channels == meta["pre_channels"]
    x01 = (io["x"] + 1) / 2
    # our partition == the official adaptive_initialize (cv2 Sobel / resize there, PyTorch here)
    init = tok.initial_geometry(x01)
    torch.testing.assert_close(init, io["init_gpscodes"], rtol=0, atol=1e-6)
    W = tok.config.image_size
    torch.testing.assert_close(partition_boxes(init, W, W), (W - 1) * (io["regions"] + 1) / 2, rtol=0, atol=1e-4)
    with torch.no_grad():
        z, _ = tok.encode(x01, init_geometry=io["init_gpscodes"])
        torch.testing.assert_close(z, io["tokens"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tok.render(io["tokens"]), io["rendered"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tok.decode(io["tokens"]) * 2 - 1, io["recon"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not a GPSToken state dict"):
        T.load_official("gpstoken", {"x": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match="gpsconfig"):
        T.load_official("gpstoken", sd, {"model": {}})


def test_load_official_matches_the_official_model_at_2x():
    """tests/fixtures/gpstoken/io_2x: the official inference path on a 2 x image_size image (per-patch partition,
    patch encode, adjust_gpstoken merge, DecoderNP with _np = 2)."""
    from pathlib import Path

    from safetensors.torch import load_file

    root = Path(__file__).parent / "fixtures" / "gpstoken"
    meta = json.loads((root / "meta.json").read_text())
    config = {**meta["config"], "data": {"params": {"adaptive_minhw": meta["adaptive_minhw"]}}}
    sd = load_file(root / "state_dict.safetensors")
    tok = T.load_official("gpstoken", sd, config)
    io = load_file(root / "io_2x.safetensors")
    x01 = (io["x"] + 1) / 2
    torch.testing.assert_close(merge_patch_tokens(io["patch_tokens"], 2), io["tokens"], rtol=0, atol=1e-6)
    with torch.no_grad():
        z, info = tok.encode(x01)
        torch.testing.assert_close(info["init_geometry"], io["init_gpscodes"], rtol=0, atol=1e-6)
        torch.testing.assert_close(z, io["tokens"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tok.render(io["tokens"], scale=2), io["rendered"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tok.decode(io["tokens"], scale=2) * 2 - 1, io["recon"], rtol=1e-4, atol=1e-4)
        with imtok.use_reference():
            torch.testing.assert_close(tok(x01)[0] * 2 - 1, io["recon"], rtol=1e-4, atol=1e-4)
