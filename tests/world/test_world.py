"""The synthetic ground-truth world (images, masks, captions) and its shipped, pretrained CLIP."""

import json
import math

import numpy as np
import pytest
import torch

from aft_hf.world import (
    BASE_DIR,
    DISTRACTOR_COLOURS,
    DISTRACTOR_SHAPES,
    PretrainConfig,
    WorldConfig,
    WorldError,
    accuracies,
    evaluate_zero_shot,
    generate_arrays,
    load_imagefolder,
    load_training_record,
    load_world_clip,
    load_world_config,
    make_dataset,
    mask_array,
    render_sample,
    verify_checksums,
    write_imagefolder,
)

HELD_OUT_SEED = 12345  # neither the training stream (seed 0) nor the pretraining evaluation set (seed 1)
# fraction of the circumscribed disc a shape covers (circle 1, square 2/pi, triangle 3*sqrt(3)/(4 pi), cross)
_AREA_FACTOR = {"circle": 1.0, "square": 2 / math.pi, "triangle": 3 * math.sqrt(3) / (4 * math.pi),
                "cross": (4 * 0.34 * 2 - 4 * 0.34 ** 2) / (1 + 0.34 ** 2) / math.pi}


def test_mask_is_exactly_the_target_pixels():
    cfg = WorldConfig(noise_std=0.0, colour_jitter=0)  # so the target's pixels have its exact colour
    size = cfg.image_size
    for i in range(40):
        s = render_sample(np.random.default_rng([7, i]), cfg)
        assert s.mask.dtype == bool and s.mask.shape == (size, size) and s.image.shape == (size, size, 3)
        rgb = np.array(cfg.colours[s.colour])
        assert (s.image[s.mask] == rgb).all(), "every mask pixel has the target colour"
        # area within what the shape's size range allows (a little slack for rasterisation)
        lo = _AREA_FACTOR[s.shape] * math.pi * (cfg.target_size[0] * size / 2) ** 2
        hi = _AREA_FACTOR[s.shape] * math.pi * (cfg.target_size[1] * size / 2 + 1) ** 2
        assert 0.8 * lo <= s.mask.sum() <= 1.05 * hi, (s.shape, s.mask.sum(), lo, hi)
        # the object lies inside the image and is one compact blob no wider than its size range allows
        ys, xs = np.nonzero(s.mask)
        assert max(np.ptp(ys), np.ptp(xs)) <= cfg.target_size[1] * size + 2
        # pixels of the target colour outside the mask can only come from caption-colour distractors
        outside = (s.image == rgb).all(-1) & ~s.mask
        if not any(c == s.colour for c, _ in s.distractors):
            assert outside.sum() == 0


def test_noisy_mask_region_has_target_colour():
    cfg = WorldConfig()
    for s in (render_sample(np.random.default_rng([8, i]), cfg) for i in range(20)):
        mean = s.image[s.mask].astype(float).mean(0)
        assert np.abs(mean - np.array(cfg.colours[s.colour])).max() <= cfg.colour_jitter + 3


def test_deterministic_per_seed():
    a, b = generate_arrays(6, seed=3), generate_arrays(6, seed=3)
    for k in ("images", "masks", "labels"):
        np.testing.assert_array_equal(a[k], b[k])
    c = generate_arrays(6, seed=4)
    assert not np.array_equal(a["images"], c["images"]) and not np.array_equal(a["masks"], c["masks"])
    longer = generate_arrays(8, seed=3)  # image i depends only on (seed, i)
    np.testing.assert_array_equal(longer["images"][:6], a["images"])


def test_caption_label_and_class_names_agree():
    cfg = WorldConfig()
    ds = make_dataset(24, seed=5, cfg=cfg)
    assert ds.column_names == ["image", "mask", "caption", "label"]
    names = ds.features["label"].names
    assert names == cfg.class_names and len(names) == len(cfg.colours) * len(cfg.shapes)
    arrays = generate_arrays(24, seed=5, cfg=cfg)
    for i, row in enumerate(ds):
        assert row["caption"] == f"a photo of a {names[row['label']]}"
        colour, shape = names[row["label"]].split()
        assert colour in cfg.colours and shape in cfg.shapes
        np.testing.assert_array_equal(mask_array(row["mask"]), arrays["masks"][i])
        np.testing.assert_array_equal(np.asarray(row["image"]), arrays["images"][i])
    assert len(set(ds["label"])) > 8  # labels are spread over the classes


@pytest.mark.parametrize("vocab_shapes", [False, True])
def test_distractors_never_form_a_caption(vocab_shapes):
    cfg = WorldConfig(vocab_shape_distractors=vocab_shapes)
    captionable = {(c, s) for c in cfg.colours for s in cfg.shapes}
    seen = set()
    for i in range(200):
        s = render_sample(np.random.default_rng([9, i]), cfg)
        for d in s.distractors:
            assert d not in captionable, d
            assert d[0] in DISTRACTOR_COLOURS or d[1] in DISTRACTOR_SHAPES
            seen.add(d)
    assert any(c in cfg.colours for c, _ in seen)  # caption-colour distractors (rings, bars) exist
    assert any(s in cfg.shapes for _, s in seen) == vocab_shapes  # caption shapes only in other colours, if at all


def test_imagefolder_round_trip(tmp_path):
    write_imagefolder(tmp_path / "world", 5, seed=6)
    ds = load_imagefolder(tmp_path / "world")
    ref = make_dataset(5, seed=6)
    assert len(ds) == 5 and ds.features["label"].names == ref.features["label"].names
    for got, want in zip(ds, ref):
        assert got["caption"] == want["caption"] and got["label"] == want["label"]
        np.testing.assert_array_equal(mask_array(got["mask"]), mask_array(want["mask"]))
        np.testing.assert_array_equal(np.asarray(got["image"]), np.asarray(want["image"]))


def test_bad_settings_are_named():
    with pytest.raises(WorldError, match="image_size"):
        WorldConfig(image_size=8)
    with pytest.raises(WorldError, match="unknown target shape"):
        WorldConfig(shapes=("circle", "blob"))
    with pytest.raises(WorldError, match="overlaps"):
        WorldConfig(colours={"red": (220, 30, 30), "gray": (128, 128, 128)})
    with pytest.raises(WorldError, match="eval_seed"):
        PretrainConfig(seed=1, eval_seed=1)
    with pytest.raises(WorldError, match="multiple of patch_size"):
        PretrainConfig(patch_size=5)


def test_accuracies_split_colour_and_shape():
    cfg = WorldConfig()  # 4 shapes: label = colour * 4 + shape
    res = accuracies(np.array([0, 1, 4, 5]), np.array([0, 0, 0, 0]), cfg)
    assert res == {"accuracy": 0.25, "colour_accuracy": 0.5, "shape_accuracy": 0.5}


# --------------------------------------------------------------------------- the shipped base


def test_shipped_base_checksums_match():
    assert (BASE_DIR / "model.safetensors").is_file()
    assert verify_checksums(BASE_DIR) == []
    total = sum(p.stat().st_size for p in BASE_DIR.iterdir())
    assert total < 8 * 2 ** 20, "the shipped base stays a few MB"


def test_shipped_base_is_rebuilt_by_default_command():
    record = load_training_record()
    assert record["command"] == "aft-hf world pretrain --out DIR"
    assert PretrainConfig.from_dict(record["config"]).to_dict() == PretrainConfig().to_dict()
    res = record["results"]
    assert min(res["accuracy"], res["colour_accuracy"], res["shape_accuracy"]) >= 0.9
    assert res["num_images"] >= 1000


@pytest.fixture(scope="module")
def base():
    return load_world_clip()


@pytest.mark.slow
def test_shipped_base_loads_through_package_loader(base):
    from transformers import CLIPModel

    from aft_hf.model import load_image_encoder

    model, tokenizer, cfg = base
    assert isinstance(model, CLIPModel) and model.config.text_config.eos_token_id == 3
    enc = load_image_encoder(str(BASE_DIR))
    assert enc.image_size == cfg.world.image_size and enc.base_is_full_clip
    images = generate_arrays(4, HELD_OUT_SEED, cfg.world)["images"]
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    from aft_hf.world import image_embeddings, to_pixel_values

    with torch.no_grad():
        np.testing.assert_allclose(enc(pixels).numpy(), image_embeddings(model, to_pixel_values(images)).numpy(), atol=1e-5)


@pytest.mark.slow
def test_shipped_base_meets_its_stated_accuracy(base):
    model, tokenizer, cfg = base
    stated = load_training_record()["results"]
    n = 200
    res = evaluate_zero_shot(model, tokenizer, cfg.world, num_images=n, seed=HELD_OUT_SEED)
    for key in ("accuracy", "colour_accuracy", "shape_accuracy"):
        p = stated[key]
        # 3 standard errors of a 200-image estimate below the 2000-image figure (floor 1.5 points)
        threshold = p - max(3 * math.sqrt(p * (1 - p) / n), 0.015)
        assert res[key] >= threshold, (key, res[key], p)


# --------------------------------------------------------------------------- the command line


@pytest.mark.slow
def test_cli_pretrain_few_steps_end_to_end(tmp_path, capsys):
    from transformers import CLIPModel

    from aft_hf.cli import main

    out = tmp_path / "clip"
    rc = main(["world", "pretrain", "--out", str(out), "--steps", "2", "--batch-size", "8", "--image-size", "32",
               "--vision-hidden", "32", "--vision-layers", "1", "--vision-heads", "2", "--vision-mlp", "64",
               "--eval-images", "16", "--warmup-steps", "1"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_images"] == 16 and 0 <= summary["shape_accuracy"] <= 1
    assert verify_checksums(out) == []
    record = load_training_record(out)
    assert record["config"]["steps"] == 2 and "--steps 2" in record["command"]
    model = CLIPModel.from_pretrained(str(out))
    assert model.config.vision_config.image_size == 32


def test_cli_sample_writes_imagefolder(tmp_path):
    from aft_hf.cli import main

    assert main(["world", "sample", "--out", str(tmp_path / "s"), "-n", "3"]) == 0
    lines = (tmp_path / "s" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all((tmp_path / "s" / json.loads(line)["mask_file_name"]).is_file() for line in lines)


def test_checksum_catches_a_changed_file(tmp_path):
    import shutil

    folder = tmp_path / "base"
    shutil.copytree(BASE_DIR, folder)
    assert verify_checksums(folder) == []
    with open(folder / "config.json", "a") as f:
        f.write(" ")
    assert verify_checksums(folder) == ["config.json"]
    (folder / "SHA256SUMS").unlink()
    with pytest.raises(WorldError, match="SHA256SUMS"):
        verify_checksums(folder)


@pytest.mark.slow
def test_pretraining_is_reproducible_from_its_seed():
    from aft_hf.world import pretrain

    def run(seed):
        cfg = PretrainConfig(seed=seed, world=WorldConfig(image_size=32), steps=3, batch_size=8, warmup_steps=1,
                             vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64, eval_images=8,
                             eval_every=0, curriculum_steps=2)
        model, _, res = pretrain(cfg, progress=False)
        return model.state_dict(), res

    (a, ra), (b, rb), (c, _) = run(0), run(0), run(2)
    assert all(torch.equal(a[k], b[k]) for k in a) and ra["final_loss"] == rb["final_loss"]
    assert not torch.equal(a["visual_projection.weight"], c["visual_projection.weight"])


# --------------------------------------------------------------------------- which folders are world CLIPs


def _aft_finetune(folder):
    """A folder as `aft-hf train` exports it from the world base (weights unchanged here: only the layout counts)."""
    from aft_hf.config import TrainConfig
    from aft_hf.model import export_pretrained, load_image_encoder

    cfg = TrainConfig()
    cfg.model.name_or_path = "builtin:world-clip"
    return export_pretrained(load_image_encoder("builtin:world-clip"), folder,
                             extra_files={"aft_config.yaml": cfg.to_yaml()})


@pytest.mark.slow
def test_world_commands_accept_builtin_names_and_aft_finetunes(tmp_path, capsys):
    from aft_hf.cli import main

    assert main(["world", "eval", "-n", "4", "--model", "builtin:world-clip"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 4
    finetune = _aft_finetune(tmp_path / "aft")
    assert load_world_config(finetune).to_dict() == PretrainConfig().to_dict()
    assert main(["world", "eval", "-n", "4", "--model", str(finetune)]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1
    assert main(["world", "sample", "-n", "2", "--model", "builtin:world-clip", "--out", str(tmp_path / "s1")]) == 0
    assert main(["world", "sample", "-n", "2", "--model", str(finetune), "--out", str(tmp_path / "s2")]) == 0


def test_world_commands_refuse_what_is_not_a_world_clip_or_no_images(tmp_path, tiny_clip_path, capsys):
    from aft_hf.cli import main

    assert main(["world", "eval", "-n", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
    assert main(["world", "sample", "-n", "0", "--out", str(tmp_path / "s")]) == 2
    assert main(["world", "eval", "-n", "4", "--model", str(tiny_clip_path)]) == 2
    assert "not a world CLIP" in capsys.readouterr().err
    with pytest.raises(WorldError, match=">= 1"):
        evaluate_zero_shot(None, None, WorldConfig(), num_images=0)


def test_world_clip_config_is_the_package_builder_and_matches_the_shipped_base():
    from aft_hf.tokenizer import build_word_tokenizer
    from aft_hf.world import build_clip_config

    cfg = PretrainConfig()
    built = build_clip_config(cfg, len(build_word_tokenizer(cfg.world.words))).to_dict()
    shipped = json.loads((BASE_DIR / "config.json").read_text())
    for tower in ("text_config", "vision_config"):
        assert {k: built[tower][k] for k in shipped[tower]} == shipped[tower]
    assert built["projection_dim"] == shipped["projection_dim"]


@pytest.mark.slow
def test_world_clip_takes_long_prompts_truncated_as_clip_does(tmp_path):
    """The shipped tokenizer's limit is the text model's 10 positions; longer text keeps <bos> ... <eos>."""
    from transformers import AutoTokenizer

    from aft_hf.cli import main
    from aft_hf.explain import load_text_tower
    from aft_hf.world.config import text_positions

    tokenizer = AutoTokenizer.from_pretrained(str(BASE_DIR))
    positions = json.loads((BASE_DIR / "config.json").read_text())["text_config"]["max_position_embeddings"]
    assert tokenizer.model_max_length == positions == text_positions(PretrainConfig())
    text = load_text_tower("builtin:world-clip")
    long = "a bad photo of the big {} shape object in this picture with a cat and a dog."
    ids = text.tokenizer([long.format("red circle")], truncation=True, max_length=text.max_length)["input_ids"][0]
    assert len(ids) == positions and ids[0] == 2 and ids[-1] == 3  # <bos> first, <eos> (where CLIP pools) last
    assert torch.isfinite(text.class_embeddings(["red circle", "blue square"], [long])).all()
    sample = tmp_path / "ws"
    assert main(["world", "sample", "--out", str(sample), "-n", "6"]) == 0
    assert main(["evaluate", "--model", "builtin:world-clip", "--dataset", str(sample), "--metrics", "zeroshot",
                 "--templates", "clip80", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["num_templates"] == 80 and 0 <= report["metrics"]["zeroshot_top1"] <= 1
