"""Training objectives: the registry, TeCoA's loss and attack, labels from the data, refusals, resume."""

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from transformers import CLIPVisionModelWithProjection

from aft_hf.attack import PGDAttacker
from aft_hf.config import ConfigError, DataConfig, load_config
from aft_hf.data import build_dataloader
from aft_hf.data.errors import DataError
from aft_hf.explain.targets import TextTower, load_text_tower
from aft_hf.model import load_image_encoder
from aft_hf.objective_setup import training_class_names
from aft_hf.objectives import (
    EmbeddingObjective,
    ObjectiveError,
    TecoaObjective,
    available_objectives,
    get_objective,
)
from aft_hf.train import aft_step, list_checkpoints, train
from tests.image_helpers import write_png_folder
from tests.train_helpers import Interrupt, crash_after_checkpoint

CLASSES = ("cat", "dog", "car", "bird")


def labelled_folder(root, per_class=4, size=36, seed=0):
    """An imagefolder with one class folder per name of CLASSES (labels: a ClassLabel of the folder names)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] = 40 + 50 * c  # a little class signal
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def tecoa_cfg(model, data, out, *extra):
    return load_config(None, [
        "--model.name_or_path", str(model), "--data.dataset", str(data), "--output_dir", str(out),
        "--objective", "tecoa", "--optim.batch_size", "8", "--max_steps", "4", "--warmup_steps", "1", "--lr", "1e-3",
        "--attack.steps", "2", "--logging.report_to", "none", "--log_every", "1", "--checkpointing_steps", "2",
        *extra])


def tiny_tecoa(tiny_clip_path):
    text = load_text_tower(str(tiny_clip_path))
    return TecoaObjective(text.class_embeddings(CLASSES), text.logit_scale, list(CLASSES))


def test_registry_and_config_choices():
    assert available_objectives()[:2] == ("embedding", "tecoa")
    assert get_objective("tecoa") is TecoaObjective
    with pytest.raises(ObjectiveError, match="unknown objective 'x'.*embedding, tecoa"):
        get_objective("x")
    assert load_config(None, []).objective == "embedding"  # the default is unchanged AFT
    with pytest.raises(ConfigError, match="objective: unknown objective 'fare'"):
        load_config(None, ["--objective", "fare"])
    with pytest.raises(ConfigError, match="tecoa needs model.embedding: pooled"):
        load_config(None, ["--objective", "tecoa", "--model.embedding", "patch_tokens"])


@pytest.mark.slow
def test_tecoa_loss_decreases_on_a_fixed_batch(tiny_clip_path, single_thread):
    torch.manual_seed(0)
    encoder = load_image_encoder(str(tiny_clip_path))
    frozen = encoder.frozen_copy()
    objective = tiny_tecoa(tiny_clip_path)
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    attacker = PGDAttacker(eps=4 / 255, steps=2, alpha=1 / 255)
    images, labels = torch.rand(8, 3, 32, 32), torch.arange(8) % 4
    losses = []
    for step in range(25):
        generator = torch.Generator().manual_seed(step)
        loss, targets = aft_step(accelerator, encoder, encoder, frozen, attacker, optimizer, scheduler, images,
                                 generator, objective=objective, labels=labels)
        losses.append(loss.item())
        assert torch.equal(targets, labels)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_attack_raises_the_cross_entropy(tiny_clip_path, single_thread):
    encoder = load_image_encoder(str(tiny_clip_path)).eval()
    objective = tiny_tecoa(tiny_clip_path)
    torch.manual_seed(1)
    images, labels = torch.rand(16, 3, 32, 32), torch.arange(16) % 4
    attacker = PGDAttacker(eps=8 / 255, steps=10, alpha=2 / 255, noise_std=0.0)
    adversarial = attacker(encoder, images, lambda e: objective.loss(e, labels), torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = objective.loss(encoder(images), labels)
        attacked = objective.loss(encoder(adversarial), labels)
    assert (adversarial - images).abs().max() <= 8 / 255 + 1e-6
    assert attacked.mean() > clean.mean()
    assert attacker.last_losses[-1] > attacker.last_losses[0]
    # the logits are s * cos(f(x), T), with T normalised class embeddings
    logits = objective.logits(encoder(images))
    cos = torch.nn.functional.normalize(encoder(images), dim=-1) @ objective.class_weights.T
    assert torch.allclose(logits, objective.logit_scale * cos, atol=1e-5)


@pytest.mark.slow
def test_class_embeddings_are_computed_once(tiny_clip_path, tmp_path, monkeypatch):
    data = labelled_folder(tmp_path / "imgs")
    calls = []
    original = TextTower.class_embeddings

    def counted(self, names, templates=("a photo of a {}.",)):
        calls.append((list(names), list(templates)))
        return original(self, names, templates)

    monkeypatch.setattr(TextTower, "class_embeddings", counted)
    train(tecoa_cfg(tiny_clip_path, data, tmp_path / "out", "--max_steps", "6"))
    assert calls == [(sorted(CLASSES), ["a photo of a {}."])]  # ClassLabel of the folders, in label order
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert len(summary["log_history"]) == 6
    assert all("train/clean_cross_entropy" in h and "train/clean_distance" not in h for h in summary["log_history"])


def test_data_without_labels_is_refused_in_one_line(tiny_clip_path, tmp_path):
    data = write_png_folder(tmp_path / "imgs", 8)  # one class folder: no label column
    with pytest.raises(DataError, match="no label column 'label'.*needs labels") as err:
        train(tecoa_cfg(tiny_clip_path, data, tmp_path / "out"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_vision_only_base_needs_a_text_model(tiny_clip_path, tiny_vision_path, tmp_path):
    data = labelled_folder(tmp_path / "imgs")
    with pytest.raises(ObjectiveError, match="vision-only; set model.text_model") as err:
        train(tecoa_cfg(tiny_vision_path, data, tmp_path / "a"))
    assert "\n" not in str(err.value)
    final = train(tecoa_cfg(tiny_vision_path, data, tmp_path / "b", "--max_steps", "2",
                            "--model.text_model", str(tiny_clip_path)))
    assert (final / "model.safetensors").is_file()




def test_a_text_model_of_another_family_is_refused_in_one_line(tiny_clip_path, tmp_path):
    """--model.text_model a SigLIP for a CLIP base: one line naming both (it was an AttributeError traceback)."""
    from aft_hf.model import save_tiny_siglip

    siglip = save_tiny_siglip(tmp_path / "siglip", seed=0)
    data = labelled_folder(tmp_path / "imgs", per_class=2)
    with pytest.raises(ObjectiveError, match=r"is a clip model but the text tower of '.*siglip' is siglip's; set "
                                             r"model.text_model") as err:
        train(tecoa_cfg(tiny_clip_path, data, tmp_path / "out", "--model.text_model", str(siglip)))
    assert "\n" not in str(err.value) and not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_resume_with_tecoa_matches_uninterrupted_run(tiny_clip_path, tmp_path, monkeypatch):
    data = labelled_folder(tmp_path / "imgs", per_class=6)  # 24 images, batch 8: step 2 is mid-epoch
    full = train(tecoa_cfg(tiny_clip_path, data, tmp_path / "a"))
    crash_after_checkpoint(monkeypatch, 2)
    with pytest.raises(Interrupt):
        train(tecoa_cfg(tiny_clip_path, data, tmp_path / "b"))
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_00000002"]
    resumed = train(tecoa_cfg(tiny_clip_path, data, tmp_path / "b", "--resume_from_checkpoint", "latest"))
    a = CLIPVisionModelWithProjection.from_pretrained(full).state_dict()
    b = CLIPVisionModelWithProjection.from_pretrained(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # switching the objective on resume is a change of the optimisation: refused
    with pytest.raises(ConfigError, match="objective: 'tecoa' -> 'embedding'"):
        train(load_config(None, ["--model.name_or_path", str(tiny_clip_path), "--data.dataset", str(data),
                                 "--output_dir", str(tmp_path / "b"), "--optim.batch_size", "8", "--max_steps", "4",
                                 "--warmup_steps", "1", "--lr", "1e-3", "--attack.steps", "2",
                                 "--logging.report_to", "none", "--log_every", "1", "--checkpointing_steps", "2",
                                 "--resume_from_checkpoint", "latest"]))


def test_world_sample_labels_and_class_names(tmp_path):
    from aft_hf.world import WorldConfig, write_imagefolder

    folder = write_imagefolder(tmp_path / "world", 8, seed=0)
    names = training_class_names(DataConfig(dataset=str(folder)))
    assert names == list(WorldConfig().class_names)
    loader = build_dataloader(DataConfig(dataset=str(folder)), 32, 4, seed=0, label_column="label",
                              num_classes=len(names))
    batch = next(iter(loader))
    metadata = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert batch["labels"].dtype == torch.long and set(batch["labels"].tolist()) <= {m["label"] for m in metadata}
    # a names file with fewer classes than the labels: the bad label is named, not a silent wrong class
    short = tmp_path / "names.txt"
    short.write_text("red circle\n")
    with pytest.raises(DataError, match="not a class index in \\[0, 1\\)"):
        for _ in build_dataloader(DataConfig(dataset=str(folder)), 32, 8, seed=0, label_column="label",
                                  num_classes=1):
            pass


@pytest.mark.slow
def test_streamed_imagenet_style_labels(tmp_path):
    """A streamed parquet split with a 1000-class ClassLabel `label` column (as ImageNet on the Hub)."""
    import io

    import datasets

    rng = np.random.default_rng(0)

    def png():
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    synsets = ["n01440764", "n01443537", *[f"n{i:08d}" for i in range(2, 999)], "n15075141"]  # ImageNet's ids
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=synsets)})
    ds = datasets.Dataset.from_dict({"image": [png() for _ in range(12)], "label": [7 * i for i in range(12)]},
                                    features=features)
    (tmp_path / "imagenet" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "imagenet" / "data" / "train-00000-of-00001.parquet"))
    cfg = DataConfig(dataset=str(tmp_path / "imagenet"), streaming=True, shuffle_buffer=4)
    names = training_class_names(cfg)
    assert len(names) == 1000 and names[0] == "tench"  # the shipped cleaned ImageNet names
    loader = build_dataloader(cfg, 32, 4, seed=0, label_column="label", num_classes=1000)
    labels = torch.cat([b["labels"] for b in loader])
    assert sorted(labels.tolist()) == [7 * i for i in range(12)]


def test_embedding_objective_is_the_aft_distance(tiny_encoder):
    frozen = tiny_encoder.frozen_copy()
    objective = EmbeddingObjective(frozen)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        targets = objective.targets(x)
        assert torch.equal(targets, frozen(x))
        assert torch.equal(objective.loss(tiny_encoder(x), targets),
                           (tiny_encoder(x) - frozen(x)).pow(2).sum(-1))


@pytest.mark.slow
def test_docs_tecoa_example_runs(tmp_path, monkeypatch, single_thread):
    """docs/tecoa.md: the world example's commands (as written, at a smaller size) and the Python block."""
    import re
    import shlex
    from pathlib import Path

    from aft_hf.cli import main

    doc = (Path(__file__).resolve().parents[1] / "docs" / "tecoa.md").read_text()
    block = re.search(r"tested-by: tests/test_objectives.py::test_docs_tecoa_example_runs -->\n```bash\n(.*?)```",
                      doc, re.S).group(1)
    commands = [shlex.split(c) for c in block.replace("\\\n", " ").strip().splitlines()]
    assert [c[:2] for c in commands] == [["aft-hf", "world"], ["aft-hf", "train"]]
    smaller = {"-n": "16", "--max_steps": "2", "--optim.batch_size": "8"}
    monkeypatch.chdir(tmp_path)
    for command in commands:
        args = [smaller.get(prev, a) for prev, a in zip([""] + command[1:], command[1:])]
        assert main(args) == 0, command
    config = (tmp_path / "tecoa_out" / "final" / "aft_config.yaml").read_text()
    assert "objective: tecoa" in config
    namespace: dict = {}
    exec(re.search(r"```python\n(.*?)```", doc, re.S).group(1), namespace)
    assert namespace["loss"].shape == (4,) and torch.isfinite(namespace["loss"]).all()


def test_class_names_file_must_match_the_class_count(tmp_path):
    data = labelled_folder(tmp_path / "imgs", per_class=1)
    names = tmp_path / "names.txt"
    names.write_text("kitten\npuppy\nautomobile\nbirdie\n")
    assert training_class_names(DataConfig(dataset=str(data), class_names=str(names)))[0] == "kitten"
    names.write_text("kitten\npuppy\n")
    with pytest.raises(ObjectiveError, match=r"data.class_names gives 2 names but the label column has 4 classes \('label' of"):
        training_class_names(DataConfig(dataset=str(data), class_names=str(names)))
    flat = write_png_folder(tmp_path / "flat", 2)
    with pytest.raises(DataError, match="no label column"):
        training_class_names(DataConfig(dataset=str(flat)))


def test_card_describes_the_objective_that_was_trained():
    """A TeCoA run's card gives TeCoA's formula and reference, not AFT's unsupervised objective."""
    from aft_hf.card import _method_section

    recipe = {"objective": "tecoa", "attack": {"norm": "linf", "eps": 4, "steps": 10, "alpha": 1}, "model": {},
              "optim": {"lr": 1e-5, "max_steps": 10, "batch_size": 8, "scheduler": "cosine", "warmup_steps": 1}}
    text = _method_section(recipe, "openai/clip-vit-base-patch16")
    assert "`tecoa` objective" in text and TecoaObjective.formula in text and "Mao et al." in text
    assert "unsupervised" not in text and "needs class labels" in text
    assert "AFT (adversarial fine-tuning" in _method_section({**recipe, "objective": "embedding"}, "b")
