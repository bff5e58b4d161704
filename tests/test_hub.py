"""Hub folder, model card and push (the upload intercepted): all offline."""

import json
import logging
import os

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image

from aft_hf import card, hub
from aft_hf.cli import main
from aft_hf.config import TrainConfig
from aft_hf.hub import IGNORE_PATTERNS, HubError, build_model_card, prepare_hub_folder, push_model

FAKE_TOKEN = "hf_FAKEtokenFORtests0123456789abcdef"
REPORT = {  # aft_hf.evaluate.report schema 1, trimmed
    "schema_version": 1, "model": "out/final", "text_model": "out/final", "dataset": "imagenet-1k-val-subset",
    "split": "validation", "num_samples": 500, "skipped_images": 0, "num_classes": 1000, "num_templates": 1,
    "methods": ["simple_gradient"], "seed": 0,
    "metrics": {
        "zeroshot_top1": 0.6125, "zeroshot_top5": 0.881,
        "robust_top1": {"1/255": 0.402, "2/255": 0.213, "4/255": None},  # NaN is written as null
        "robust_attack": {"norm": "linf", "steps": 10, "eps": ["1/255", "2/255", "4/255"]},
        "deletion": {"fractions": [0.0, 0.5, 1.0], "methods": {"simple_gradient": {"auc": 0.1234, "curve": [1, 0.2, 0]},
                                                               "random": {"auc": 0.4321, "curve": [1, 0.5, 0]}}},
        "roar": {"fractions": [0.1, 0.5], "accuracy": {"simple_gradient": [0.5, 0.3]}, "evaluator": "linear",
                 "split": {"train": 100, "test": 50}},
        "pointing_game": {"simple_gradient": {"exact": 0.71, "tolerance_15px": 0.8}},
        "energy_in_mask": {"simple_gradient": {"energy": 0.61, "chance": 0.137}},
        "gini": {"simple_gradient": 0.55},
        "new_metric": 3.5, "new_structure": {"a": {"b": [1, 2]}},
    },
    "citations": {"zeroshot": "Radford et al. 2021"}, "figures": {"examples": "examples.png"},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_encoder):
    """An export as the trainer writes it, with leftovers that must not be published."""
    from aft_hf.model import export_pretrained

    cfg = TrainConfig()
    cfg.attack.norm, cfg.attack.eps, cfg.attack.eps2 = "huber", 1.0, 1.0
    folder = export_pretrained(tiny_encoder, tmp_path_factory.mktemp("run") / "final",
                               extra_files={"aft_config.yaml": cfg.to_yaml()})
    (folder / "checkpoints" / "step_1").mkdir(parents=True)
    (folder / "checkpoints" / "step_1" / "model.safetensors").write_bytes(b"in progress")
    (folder / "logs").mkdir()
    (folder / "logs" / "events").write_text("log")
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, exported):
    """The report (of the exported folder's weights, as `aft-hf evaluate` records them) and figures."""
    from aft_hf.files import folder_weights_sha256

    root = tmp_path_factory.mktemp("inputs")
    (root / "report.json").write_text(json.dumps(dict(REPORT, weights_sha256=folder_weights_sha256(exported))))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 48, 3), dtype=np.uint8)).save(root / "saliency.png")
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / "examples.png")
    return root


@pytest.fixture(scope="module")
def dry_run(exported, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "folder"
    rc = main(["push", str(exported), "--repo-id", "me/tiny-aft", "--report", str(inputs / "report.json"),
               "--figure", str(inputs / "saliency.png"), "--dry-run", "--out", str(out)])
    assert rc == 0
    return out


def test_dry_run_folder_contents(dry_run):
    files = {p.relative_to(dry_run).as_posix() for p in dry_run.rglob("*") if p.is_file()}
    assert {"README.md", "config.json", "model.safetensors", "aft_config.yaml", "eval_report.json",
            "assets/saliency.png", "assets/examples.png", "preprocessor_config.json", "tokenizer.json"} <= files
    copied = json.loads((dry_run / "eval_report.json").read_text())
    assert copied["metrics"] == REPORT["metrics"] and copied["figures"] == {"examples": "assets/examples.png"}
    assert not any(f.startswith(("checkpoints/", "logs/")) for f in files)


def test_card_metadata_round_trips(dry_run):
    card = ModelCard.load(dry_run / "README.md")
    d = card.data
    assert d.base_model == "openai/clip-vit-base-patch16"
    assert d.datasets == ["ILSVRC/imagenet-1k"]
    assert d.library_name == "transformers" and d.pipeline_tag == "zero-shot-image-classification"
    assert {"adversarial-training", "robustness", "interpretability", "clip", "aft"} <= set(d.tags)
    assert d.model_name == "tiny-aft"
    assert d.license is None  # the base's card is not available offline: nothing invented
    got = {(r.metric_type, (r.metric_args or {}).get(next(iter(r.metric_args or {"": 0})))): r.metric_value
           for r in d.eval_results}
    # only zero-shot classification accuracies: saliency metrics, baselines, unknown keys, ROAR curves, nulls and
    # the attack setup stay out of model-index (the Hub has no task type for them)
    want = {("accuracy", None): 0.6125, ("top_5_accuracy", None): 0.881, ("robust_accuracy", "1/255"): 0.402,
            ("robust_accuracy", "2/255"): 0.213}
    assert got == want
    assert {r.task_type for r in d.eval_results} == {"zero-shot-image-classification"}
    assert all(r.dataset_name == "imagenet-1k-val-subset" and r.dataset_split == "validation" for r in d.eval_results)
    # metadata re-serialises identically (what the Hub's validator reads)
    assert ModelCard(str(card)).data.to_dict() == d.to_dict()


def test_card_text(dry_run):
    text = (dry_run / "README.md").read_text()
    for needed in ("## Method", "## Training recipe", "| `attack.norm` | huber |", "| `optim.lr` | 1e-05 |",
                   "## Evaluation", "| Robust zero-shot top-1 accuracy (PGD-10, L-inf) | 2/255 | 0.213 | higher |",
                   "images `500`",
                   "robust accuracy under norm `linf`, steps `10`", "| ROAR accuracy (evaluator retrained) | "
                   "simple_gradient @ 0.5 | 0.3 | lower |", "zeroshot: Radford et al. 2021",
                   "![Saliency maps](assets/saliency.png)", "![Examples (aft-hf evaluate)](assets/examples.png)",
                   "## Usage", 'pipeline("zero-shot-image-classification", model="me/tiny-aft")',
                   "Gong, Shizhan and Lei, Haoyu and Dou, Qi and Farnia, Farzan",
                   "Schlarmann", "an L-inf box of radius 1/255 with a colour-channel L2 penalty",
                   "| Deletion AUC | simple_gradient | 0.1234 | lower |", "| Pointing game | simple_gradient, exact",
                   "| Energy in mask | simple_gradient | 0.61 |", "| new_metric |  | 3.5 |",
                   "## Limitations", "CLIPVisionModel.from_pretrained(\"me/tiny-aft\")", "aft-hf export-openclip"):
        assert needed in text, needed
    assert "More Information Needed" not in text and "4/255 |" not in text and "new_structure" not in text
    # baselines are reference levels in their own table, never rows of the model's results
    results, baselines = text.split("## Evaluation")[1].split("Reference levels")
    assert "random" not in results and "0.137" not in results and "0.4321" not in results
    assert "| Deletion AUC | random | 0.4321 |" in baselines and "| Energy in mask | chance | 0.137 |" in baselines
    assert str(dry_run.parent) not in text and "/tmp" not in text  # no local path of the author's machine


def test_dry_run_weights_load_three_ways(dry_run):
    from transformers import CLIPModel, CLIPVisionModelWithProjection, pipeline

    full = CLIPModel.from_pretrained(dry_run)
    vision = CLIPVisionModelWithProjection.from_pretrained(dry_run)
    pixels = torch.rand(1, 3, 32, 32)
    assert torch.allclose(full.get_image_features(pixel_values=pixels).pooler_output,
                          vision(pixel_values=pixels).image_embeds, atol=1e-6)
    classifier = pipeline("zero-shot-image-classification", model=str(dry_run))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    scores = classifier(image, candidate_labels=["a photo of a cat", "a photo of a dog", "a red circle"])
    assert len(scores) == 3 and abs(sum(s["score"] for s in scores) - 1) < 1e-5


def test_card_without_data_has_no_empty_sections(tiny_vision_path, tmp_path):
    """A plain vision-only folder: no recipe, no report, no figure -> those sections are absent."""
    out = prepare_hub_folder(tiny_vision_path, tmp_path / "hub")
    text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-feature-extraction" and card.data.eval_results is None
    for absent in ("## Method", "## Training recipe", "## Evaluation", "## Figures", "zero-shot-image-classification",
                   "More Information Needed"):
        assert absent not in text
    assert "CLIPVisionModelWithProjection.from_pretrained" in text


def test_license_inherited_from_local_base(tiny_clip_path, tmp_path, tiny_encoder):
    from aft_hf.model import export_pretrained

    base = tmp_path / "base"
    import shutil

    shutil.copytree(tiny_clip_path, base)
    (base / "README.md").write_text("---\nlicense: mit\n---\n# base\n")
    cfg = TrainConfig()
    cfg.model.name_or_path = str(base)
    folder = export_pretrained(tiny_encoder, tmp_path / "final", extra_files={"aft_config.yaml": cfg.to_yaml()})
    card = build_model_card(folder, repo_id="me/x")
    assert card.data.license == "mit" and card.data.base_model is None  # a local base has no Hub id
    assert str(tmp_path) not in str(card) and "local folder base" in card.text  # no absolute local path
    assert build_model_card(folder, repo_id="me/x", license="apache-2.0").data.license == "apache-2.0"


def test_hub_id_of():
    assert card.hub_id_of("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    assert card.hub_id_of("/x/hub/models--openai--clip-vit-base-patch32/snapshots/abc") == "openai/clip-vit-base-patch32"
    assert card.hub_id_of("builtin:tiny-clip") is None and card.hub_id_of("a/b/c") is None


def test_noise_control_is_not_called_adversarial(tiny_encoder, tmp_path):
    from aft_hf.model import export_pretrained

    cfg = TrainConfig()
    cfg.attack.mode = "noise"
    folder = export_pretrained(tiny_encoder, tmp_path / "final", extra_files={"aft_config.yaml": cfg.to_yaml()})
    card = build_model_card(folder)
    assert "adversarial-training" not in card.data.tags and "control run" in card.text
    assert "Adversarial training with a budget" not in card.text  # nor credited with what adversarial training does
    adversarial = build_model_card(export_pretrained(tiny_encoder, tmp_path / "aft",
                                                     extra_files={"aft_config.yaml": TrainConfig().to_yaml()}))
    assert "Adversarial training with a budget" in adversarial.text and "a finding about the method" in adversarial.text


def test_bad_inputs_give_clear_errors(exported, inputs, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(HubError, match="not a JSON object"):
        prepare_hub_folder(exported, tmp_path / "a", report=tmp_path / "bad.json")
    with pytest.raises(HubError, match="not a readable image"):
        prepare_hub_folder(exported, tmp_path / "b", figure=inputs / "report.json")
    with pytest.raises(HubError, match="no config.json"):
        prepare_hub_folder(tmp_path, tmp_path / "c")
    with pytest.raises(HubError, match=r"config.json' is a file; give the model folder that holds it"):
        prepare_hub_folder(exported / "config.json", tmp_path / "c")  # not "no config.json" about config.json itself
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("user data")
    with pytest.raises(HubError, match="--overwrite"):
        prepare_hub_folder(exported, tmp_path / "d")
    assert main(["push", str(exported), "--repo-id", "me/x", "--dry-run"]) == 2
    assert "--dry-run needs --out" in capsys.readouterr().err


class _Recorder:
    """Stands in for the two network calls of HfApi; records what they were given."""

    def __init__(self):
        self.calls = []

    def install(self, monkeypatch):
        rec = self

        def create_repo(api, repo_id, **kw):
            rec.calls.append(("create_repo", repo_id, kw, api.token))

        def upload_folder(api, *, repo_id, folder_path, **kw):
            files = {}
            for root, _, names in os.walk(folder_path):
                for n in names:
                    p = os.path.join(root, n)
                    files[os.path.relpath(p, folder_path)] = open(p, "rb").read()
            rec.calls.append(("upload_folder", repo_id, dict(kw, files=files), api.token))
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr("aft_hf.env.hub_offline", lambda: False)  # the faked Hub is reachable offline too
        return self


def test_push_intercepted_token_never_leaks(exported, inputs, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    rec = _Recorder().install(monkeypatch)
    caplog.set_level(logging.DEBUG)
    rc = main(["push", str(exported), "--repo-id", "me/tiny-aft", "--report", str(inputs / "report.json"), "--private"])
    assert rc == 0
    (name1, repo1, kw1, tok1), (name2, repo2, kw2, tok2) = rec.calls
    assert (name1, repo1, kw1["private"], kw1["exist_ok"]) == ("create_repo", "me/tiny-aft", True, True)
    assert (name2, repo2) == ("upload_folder", "me/tiny-aft") and kw2["ignore_patterns"] == IGNORE_PATTERNS
    assert tok1 == tok2 == FAKE_TOKEN  # the environment's token was used ...
    files = kw2["files"]
    assert {"README.md", "config.json", "model.safetensors", "eval_report.json"} <= set(files)
    assert not any(f.startswith(("checkpoints", "logs")) for f in files)
    assert "0.6125" in files["README.md"].decode()
    out = capsys.readouterr()
    assert "https://huggingface.co/me/tiny-aft/commit/abc" in out.out
    # ... and appears in no output, no log record and no uploaded file
    assert FAKE_TOKEN not in out.out + out.err
    assert all(FAKE_TOKEN not in r.getMessage() for r in caplog.records)
    assert all(FAKE_TOKEN.encode() not in content for content in files.values())
    assert not any(FAKE_TOKEN.encode() in p.read_bytes() for p in exported.rglob("*") if p.is_file())


def test_push_without_token_is_a_clear_error(exported, monkeypatch, capsys):
    monkeypatch.setattr(hub, "get_token", lambda: None)
    rec = _Recorder().install(monkeypatch)
    assert main(["push", str(exported), "--repo-id", "me/x"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err and rec.calls == []


def test_push_offline_is_a_clear_error_without_the_token(exported, monkeypatch, caplog):
    """Offline mode (as here): refused before the card is built or anything says "uploading"; says why,
    never echoes the token."""
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    built = []
    monkeypatch.setattr(hub, "prepare_hub_folder", lambda *a, **k: built.append(a))
    with caplog.at_level("INFO", logger="aft_hf"), pytest.raises(HubError) as info:
        push_model(exported, "me/x")
    assert "HF_HUB_OFFLINE" in str(info.value) and FAKE_TOKEN not in str(info.value)
    assert "'me/x'" in str(info.value) and built == [] and "uploading" not in caplog.text


def test_push_offline_through_the_real_hf_api_still_says_why(exported, monkeypatch):
    """Should huggingface_hub itself refuse (our check passed), the same one-line reason comes out."""
    from aft_hf import env

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(env, "hub_offline", lambda: False)
    with pytest.raises(HubError) as info:
        push_model(exported, "me/x")
    assert "HF_HUB_OFFLINE" in str(info.value) and FAKE_TOKEN not in str(info.value)


@pytest.mark.slow
def test_train_push_to_hub_uploads_the_card(tmp_path, monkeypatch):
    """Training with hub.push_to_hub uploads the same folder as `aft-hf push` (card included)."""
    from aft_hf.config import load_config
    from aft_hf.train import train

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the trainer refuses to start a push run in offline mode
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    rec = _Recorder().install(monkeypatch)
    cfg = load_config(None, ["--model.name_or_path", "builtin:tiny-clip", "--data.dataset", "builtin:shapes",
                             "--optim.max_steps", "1", "--optim.warmup_steps", "0", "--optim.batch_size", "2",
                             "--attack.steps", "1", "--logging.report_to", "none", "--checkpoint.output_dir",
                             str(tmp_path / "run"), "--hub.push_to_hub", "--hub.hub_model_id", "me/trained"])
    train(cfg)
    upload = [c for c in rec.calls if c[0] == "upload_folder"][0]
    assert upload[1] == "me/trained"
    card = upload[2]["files"]["README.md"].decode()
    assert "## Training recipe" in card and "| `optim.max_steps` | 1 |" in card
    assert not any(f.startswith("checkpoints") for f in upload[2]["files"])


def test_card_of_a_converted_checkpoint(tiny_clip_path, tmp_path):
    """A folder from `aft-hf import-checkpoint`: provenance section, base from aft_import.json, extra tags."""
    import shutil

    folder = tmp_path / "converted"
    shutil.copytree(tiny_clip_path, folder)
    (folder / "aft_import.json").write_text(json.dumps({
        "source_checkpoint": "fare4.pt", "sha256": "ab" * 32, "arch": "ViT-B-32",
        "base": "openai/clip-vit-base-patch32", "ignored_keys": ["logit_scale"]}))
    out = prepare_hub_folder(folder, tmp_path / "hub", repo_id="me/fare4", tags=["adversarial-training", "clip"])
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "openai/clip-vit-base-patch32"
    assert card.data.tags == ["clip", "open_clip-conversion", "adversarial-training"]
    assert "## Conversion" in card.text and "`fare4.pt` (sha256 `abab" in card.text and "logit_scale" in card.text
    assert "## Method" not in card.text and "## Training recipe" not in card.text


@pytest.mark.slow
def test_export_honours_the_revision(tmp_path, monkeypatch):
    """A Hub base at a tag: the exported text tower, tokenizer and processor are those of that revision
    (offline, from a Hub cache holding two revisions)."""
    import huggingface_hub.constants
    from transformers import AutoTokenizer, CLIPModel

    from aft_hf.model import export_pretrained, load_image_encoder, save_tiny_clip
    from tests.convert_helpers import fake_hub_repo

    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    for revision, seed, commit in (("main", 0, "a" * 40), ("v1", 1, "b" * 40)):
        folder = save_tiny_clip(tmp_path / f"src_{revision}", seed=seed)
        fake_hub_repo(cache, "org/tiny-clip", {p.name: p.read_bytes() for p in folder.iterdir()}, revision, commit)
    encoder = load_image_encoder("org/tiny-clip", revision="v1")
    out = export_pretrained(encoder, tmp_path / "final", revision="v1")
    exported, v1, main_ = (CLIPModel.from_pretrained(p) for p in (out, tmp_path / "src_v1", tmp_path / "src_main"))
    w = "text_model.embeddings.token_embedding.weight"
    assert torch.equal(exported.state_dict()[w], v1.state_dict()[w])
    assert not torch.equal(exported.state_dict()[w], main_.state_dict()[w])
    assert {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    assert AutoTokenizer.from_pretrained(out)("a red circle").input_ids == \
        AutoTokenizer.from_pretrained(tmp_path / "src_v1")("a red circle").input_ids


def test_report_on_a_local_folder_stays_out_of_model_index(exported, tmp_path):
    report = dict(REPORT, dataset=str(tmp_path / "my_images"), text_model=str(tmp_path / "text_tower"))
    (tmp_path / "my_images").mkdir()
    card = build_model_card(exported, repo_id="me/x", report=report)
    assert card.data.eval_results is None and card.data.datasets == ["ILSVRC/imagenet-1k"]
    assert str(tmp_path) not in str(card) and "dataset `local folder my_images`" in card.text
    assert "| Zero-shot top-1 accuracy |  | 0.6125 | higher |" in card.text  # the numbers are still in the text


def test_model_index_holds_hub_datasets_only_and_says_when_numbers_are_not_the_protocols():
    """A report on a local folder (``local:NAME`` once published) gives no model-index entry; a benchmark report
    that is not the protocol's marks every entry, the clean ones too; a weaker APGD names its iterations."""
    from aft_hf.card import eval_results_from_report
    from aft_hf.evaluate.apgd import attack_description

    assert eval_results_from_report({**REPORT, "dataset": "local:ws"}) == []
    assert eval_results_from_report({**REPORT, "dataset": "/data/ws"}) == []
    hub = eval_results_from_report(REPORT)
    assert hub and not any("not the protocol's" in r.metric_name for r in hub)
    attack = {**REPORT["metrics"]["robust_attack"], "protocol": "not the protocol's: iterations 2 (protocol 100)"}
    marked = eval_results_from_report({**REPORT, "metrics": {**REPORT["metrics"], "robust_attack": attack}})
    assert len(marked) == len(hub) and all(r.metric_name.endswith("(not the protocol's)") for r in marked)
    assert attack_description("apgd", "linf", 100) == "APGD-CE+APGD-T, L-inf"
    assert attack_description("apgd", "linf", 5) == "APGD-CE+APGD-T, L-inf, 5 iterations"


@pytest.mark.parametrize("option", ["--report", "--figure"])
def test_push_refuses_a_second_report_or_figure_rather_than_dropping_the_first(exported, option, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["push", str(exported), "--repo-id", "me/x", option, "a.json", option, "b.json", "--dry-run", "--out", "o"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {option}: given twice ('a.json', 'b.json')" in err


def test_a_plain_folder_is_not_called_a_conversion_or_an_aft_export(tiny_clip_path):
    """A baseline saved with save_pretrained (no aft_config.yaml, no aft_import.json) used to be tagged
    open_clip-conversion and introduced as "exported with aft_hf"."""
    from aft_hf.card import build_model_card

    card = build_model_card(tiny_clip_path, "me/baseline")
    assert card.data.tags == ["clip"]
    assert "exported with `aft_hf`" not in card.text and "does not say how its weights were trained" in card.text
