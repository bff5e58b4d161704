"""Zero-shot accuracy (clean, under PGD) with known answers, class names, templates, the evaluate CLI."""

import json

import datasets
import pytest
import torch

from aft_hf.evaluate import (
    ZeroShotClassifier,
    clip_templates,
    imagenet_classnames,
    predict,
    resolve_classnames,
    resolve_templates,
    robust_accuracy,
    topk_accuracy,
)
from aft_hf.explain import ExplainError, TemplateError, load_text_tower
from tests.explain_helpers import ColourEncoder

pytestmark = pytest.mark.usefixtures("single_thread")


def _colour_world():
    """Classes red, green, blue; embedding = mean colour - 0.5. Each image: red + m, green + 0 (offsets from 0.6).

    An L-inf attack of budget e moves red down and green up by e: the image flips when the margin m < 2e.
    """
    margins = [1.5, 3.0, 6.0, 20.0, -5.0]  # in 1/255; the last is misclassified (green wins) clean
    images = torch.empty(len(margins), 3, 8, 8)
    for i, m in enumerate(margins):
        images[i, 0] = 0.6 + m / 255
        images[i, 1] = 0.6
        images[i, 2] = 0.5
    return images, torch.zeros(len(margins), dtype=torch.long), torch.eye(3)


def test_zeroshot_accuracy_known_answer():
    images, labels, weights = _colour_world()
    clf = ZeroShotClassifier(ColourEncoder(), weights)
    logits = predict(clf, images, progress=False)
    assert logits.argmax(1).tolist() == [0, 0, 0, 0, 1]
    acc = topk_accuracy(logits, labels, (1, 5))
    assert acc["top1"] == pytest.approx(4 / 5) and acc["top5"] is None  # 3 classes: top-5 is n/a, not 1.0


def test_topk_accuracy_known_logits():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    acc = topk_accuracy(logits, torch.tensor([1, 0]), (1, 2, 5))
    assert acc == {"top1": 0.0, "top2": 0.5, "top5": 0.5}


@pytest.mark.parametrize("attack", ["apgd", "pgd"])
def test_robust_accuracy_known_answer_falls_with_eps(attack):
    images, labels, weights = _colour_world()
    clf = ZeroShotClassifier(ColourEncoder(), weights)
    rob = robust_accuracy(clf, images, labels, eps=(1, 2, 4), steps=10, progress=False, attack=attack)
    assert rob == {"1/255": pytest.approx(3 / 5), "2/255": pytest.approx(2 / 5), "4/255": pytest.approx(1 / 5)}


@pytest.mark.slow
def test_robust_accuracy_on_the_tiny_clip_is_at_most_clean(tiny_encoder, tiny_clip_path):
    text = load_text_tower(str(tiny_clip_path))
    names = ["red circle", "blue square", "green triangle"]
    weights = text.class_embeddings(names)
    torch.manual_seed(0)
    images = torch.rand(12, 3, 32, 32)
    clf = ZeroShotClassifier(tiny_encoder, weights, text.logit_scale)
    labels = predict(clf, images, progress=False).argmax(1)  # labels = clean predictions: clean accuracy 1
    manual = (torch.nn.functional.normalize(tiny_encoder(images), dim=-1) @ weights.T).argmax(1)
    assert torch.equal(labels, manual)
    rob = robust_accuracy(clf, images, labels, eps=(1, 4, 16), steps=5, progress=False)
    values = list(rob.values())
    assert all(0 <= v <= 1.0 for v in values) and values == sorted(values, reverse=True)
    assert values[-1] < 1.0  # 16/255 flips at least one prediction of a random tiny model


def test_class_names_and_templates():
    names = imagenet_classnames()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[207] == "Golden Retriever" and names[999] == "toilet paper"
    templates = clip_templates()
    assert len(templates) == 80 and all(t.count("{}") == 1 for t in templates)
    assert resolve_templates(None) == ["a photo of a {}."]
    assert resolve_templates("clip80") == templates
    assert resolve_templates("a sketch of a {}") == ["a sketch of a {}"]
    with pytest.raises(TemplateError, match="exactly one"):
        resolve_templates(["a photo", "a {} {}"])
    feature = datasets.ClassLabel(names=["red_circle", "blue_square"])
    assert resolve_classnames(feature=feature) == ["red circle", "blue square"]
    assert resolve_classnames(feature=datasets.ClassLabel(num_classes=1000)) == names  # numbers only: ImageNet's


@pytest.mark.parametrize("first, second, last", [("tench, Tinca tinca", "goldfish, Carassius auratus",
                                                   "toilet tissue, toilet paper, bathroom tissue"),
                                                  ("n01440764", "n01443537", "n15075141")])
def test_imagenet_names_replace_only_imagenets_own_classes(first, second, last):
    """The raw ImageNet-1k ClassLabel (WordNet names or ids) becomes the cleaned names; another data set of 1000
    classes keeps its own, and its templates stay `simple` (clip80 is for ImageNet's classes)."""
    names = imagenet_classnames()
    raw = [first, second, *[f"class_{i}" for i in range(2, 999)], last]
    assert resolve_classnames(feature=datasets.ClassLabel(names=raw)) == names
    assert resolve_templates(None, raw) == clip_templates()
    species = [f"species_{i}" for i in range(1000)]
    assert resolve_classnames(feature=datasets.ClassLabel(names=species)) == [f"species {i}" for i in range(1000)]
    assert resolve_classnames(feature=datasets.ClassLabel(names=sorted(names))) == sorted(names)  # another order
    assert resolve_templates(None, species) == ["a photo of a {}."]
    assert resolve_templates("simple", names) == ["a photo of a {}."]
    with pytest.raises(ExplainError, match="--class-names"):
        resolve_classnames(feature=datasets.Value("int64"))


def test_names_file(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("cat\n\ndog\n")
    assert resolve_classnames(str(f)) == ["cat", "dog"]
    with pytest.raises(ExplainError, match="does not exist"):
        resolve_classnames(str(tmp_path / "missing.txt"))


@pytest.mark.slow
def test_cli_evaluate_writes_json_markdown_and_pngs(tiny_clip_path, tiny_vision_path, tmp_path, capsys):
    from aft_hf.cli import main
    from aft_hf.data import write_shapes_imagefolder

    data = write_shapes_imagefolder(tmp_path / "shapes", num_images=12, size=40)
    out = tmp_path / "report"
    rc = main(["evaluate", "--model", str(tiny_clip_path), "--dataset", str(data), "--max-samples", "12",
               "--metrics", "zeroshot", "robust", "deletion", "insertion", "roar", "sparseness",
               "--methods", "saliency", "gradcam", "--attack-steps", "2", "--deletion-steps", "4",
               "--roar-fractions", "0.5", "--roar-floor", "0", "--out", str(out)])  # random weights: no evaluator reaches a floor
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1 and report["num_samples"] == 12 and report["split"] == "train"
    assert report["class_names_source"] == "dataset ClassLabel"
    assert report["image_size"] == 32 and "32 px input" in (out / "report.md").read_text()  # the side the model saw
    m = report["metrics"]
    assert 0 <= m["zeroshot_top1"] <= 1 and set(m["robust_top1"]) == {"1/255", "2/255", "4/255"}
    assert max(m["robust_top1"].values()) <= m["zeroshot_top1"]
    # 2 of the protocol's 100 iterations: the name says so, since it goes into the card's metadata
    assert m["robust_attack"] == {"attack": "apgd", "name": "APGD-CE+APGD-T, L-inf, 2 iterations", "norm": "linf", "steps": 2,
                                  "restarts": 1, "targets": min(9, report["num_classes"] - 1),
                                  "eps": ["1/255", "2/255", "4/255"]}
    assert "Attack: APGD-CE+APGD-T, L-inf, 2 iterations, 1 restart(s)" in (out / "report.md").read_text()
    assert set(m["deletion"]["methods"]) == {"saliency", "gradcam", "random"}
    for name in ("examples.png", "roar.png", "deletion_insertion.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and report["figures"]
    assert "# Evaluation of" in (out / "report.md").read_text()
    rc = main(["evaluate", "--model", str(tiny_clip_path), "--dataset", str(data), "--max-samples", "12",
               "--metrics", "robust", "--methods", "saliency", "--robust-attack", "pgd", "--eps", "4",
               "--out", str(tmp_path / "pgd")])
    pgd = json.loads((tmp_path / "pgd" / "report.json").read_text())["metrics"]
    assert rc == 0 and pgd["robust_attack"] == {"attack": "pgd", "name": "PGD-10, L-inf", "norm": "linf", "steps": 10,
                                                "eps": ["4/255"]}
    # a vision-only checkpoint without --text-model, and a bad template: clear errors, exit code 2
    assert main(["evaluate", "--model", str(tiny_vision_path), "--dataset", str(data), "--out", str(out)]) == 2
    assert "--text-model" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_clip_path), "--dataset", str(data), "--templates", "a photo",
                 "--metrics", "zeroshot", "--out", str(out)]) == 2
    assert "exactly one" in capsys.readouterr().err
