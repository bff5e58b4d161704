"""Publishing correctness (issue 20): a card only shows numbers measured on its own weights, every model of
an evaluation keeps its own report, card snippets run, and nothing local reaches the Hub. All offline."""

import json

import pytest
import torch

from aft_hf.cli import main
from aft_hf.config import TrainConfig


def _error(capsys) -> str:
    """The CLI's one-line error, no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def world(tmp_path_factory, single_thread):
    """A world sample, and a "fine-tune" of builtin:world-clip (weights moved) in a local folder named world-clip."""
    from aft_hf.model import export_pretrained, load_image_encoder

    root = tmp_path_factory.mktemp("pub")
    assert main(["world", "sample", "--out", str(root / "ws"), "-n", "8"]) == 0
    encoder = load_image_encoder("builtin:world-clip")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in encoder.vision.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    cfg = TrainConfig()
    cfg.model.name_or_path = "builtin:world-clip"
    tuned = export_pretrained(encoder, root / "local" / "world-clip", extra_files={"aft_config.yaml": cfg.to_yaml()})
    return root, tuned


@pytest.fixture(scope="module")
def evaluations(world):
    """The base alone, and base + fine-tune together (both map to the sub-folder name world-clip)."""
    root, tuned = world
    args = ["--dataset", str(root / "ws"), "--metrics", "zeroshot", "--methods", "saliency"]
    assert main(["evaluate", "--model", "builtin:world-clip", *args, "--out", str(root / "base_ev")]) == 0
    assert main(["evaluate", "--model", "builtin:world-clip", "--model", str(tuned), *args,
                 "--out", str(root / "both")]) == 0
    return root / "base_ev" / "report.json", root / "both"


def test_same_folder_name_gets_two_folders(evaluations, world):
    """Issue 20.8: builtin:world-clip and a local world-clip/ wrote one report over the other."""
    _, both = evaluations
    _, tuned = world
    a, b = (json.loads((both / d / "report.json").read_text()) for d in ("world-clip", "world-clip_2"))
    assert (a["model"], a["label"]) == ("builtin:world-clip", "world-clip")
    assert (b["model"], b["label"]) == (str(tuned), "world-clip#2")
    assert a["weights_sha256"] != b["weights_sha256"]
    comparison = (both / "comparison.md").read_text()
    assert "(world-clip/report.md)" in comparison and "(world-clip_2/report.md)" in comparison
    rows = json.loads((both / "report.json").read_text())["reports"]
    assert [r["label"] for r in rows] == ["world-clip", "world-clip#2"]
    assert rows[1]["figures"]["examples"] == "world-clip_2/examples.png"


def test_labels_name_reports_and_folders(world, tmp_path, capsys):
    root, tuned = world
    args = ["--dataset", str(root / "ws"), "--metrics", "zeroshot", "--methods", "saliency"]
    assert main(["evaluate", "--model", str(tuned), "--model", f"{tuned}/", "--label", "aft", "--label", "aft again",
                 *args, "--out", str(tmp_path / "l")]) == 0
    assert json.loads((tmp_path / "l" / "aft_again" / "report.json").read_text())["label"] == "aft again"
    assert json.loads((tmp_path / "l" / "aft" / "report.json").read_text())["label"] == "aft"
    for bad in (["--label", "x"], ["--label", "x", "--label", "x"]):
        assert main(["evaluate", "--model", str(tuned), "--model", str(tuned), *bad, *args,
                     "--out", str(tmp_path / "bad")]) == 2
        assert "--label" in _error(capsys)


def test_push_takes_only_the_row_of_the_pushed_weights(evaluations, world, tmp_path, capsys):
    """Issue 20.1: the base model's numbers went on the fine-tune's card."""
    base_report, both = evaluations
    _, tuned = world
    push = ["push", str(tuned), "--repo-id", "me/wc-aft", "--dry-run"]
    assert main([*push, "--report", str(base_report), "--out", str(tmp_path / "a")]) == 2
    err = _error(capsys)
    assert "has no row for" in err and "builtin:world-clip" in err
    assert not (tmp_path / "a").exists()

    assert main([*push, "--report", str(both / "report.json"), "--out", str(tmp_path / "b")]) == 0
    card_report = json.loads((tmp_path / "b" / "eval_report.json").read_text())
    mine = json.loads((both / "world-clip_2" / "report.json").read_text())
    assert card_report["model"] == str(tuned) and card_report["metrics"] == mine["metrics"]
    assert (tmp_path / "b" / "assets" / "examples.png").is_file()

    # a report of an earlier aft_hf (no weights hash) only with the explicit flag
    old = json.loads(base_report.read_text())
    del old["weights_sha256"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main([*push, "--report", str(tmp_path / "old.json"), "--out", str(tmp_path / "c")]) == 2
    assert "--allow-unverified-report" in _error(capsys)
    assert main([*push, "--report", str(tmp_path / "old.json"), "--allow-unverified-report",
                 "--out", str(tmp_path / "c")]) == 0
    # several models and no hashes: only the row that names the folder
    rows = json.loads((both / "report.json").read_text())
    for r in rows["reports"]:
        del r["weights_sha256"]
    (tmp_path / "old_both.json").write_text(json.dumps(rows))
    assert main([*push, "--report", str(tmp_path / "old_both.json"), "--allow-unverified-report",
                 "--out", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "d" / "eval_report.json").read_text())["model"] == str(tuned)


# --------------------------------------------------------------------------- cards whose snippets run (issue 20.2)

REPO = "me/tiny-aft"


@pytest.fixture(scope="module")
def three_kinds(tmp_path_factory, tiny_clip_path, tiny_vision_path, single_thread):
    """Exports of a full CLIPModel, a CLIPVisionModelWithProjection and a bare CLIPVisionModel (trained on
    patch tokens, the LLaVA case), each with the recipe the trainer writes."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from aft_hf.model import export_pretrained, load_image_encoder

    root = tmp_path_factory.mktemp("kinds")
    bare = root / "bare_base"
    CLIPVisionModel.from_pretrained(tiny_clip_path).save_pretrained(bare)
    CLIPImageProcessor.from_pretrained(tiny_clip_path).save_pretrained(bare)
    folders = {}
    for kind, base, embedding in (("CLIPModel", tiny_clip_path, "pooled"),
                                  ("CLIPVisionModelWithProjection", tiny_vision_path, "pooled"),
                                  ("CLIPVisionModel", bare, "patch_tokens")):
        cfg = TrainConfig()
        cfg.model.name_or_path, cfg.model.embedding = str(base), embedding
        encoder = load_image_encoder(str(base), embedding=embedding)
        folders[kind] = export_pretrained(encoder, root / kind, extra_files={"aft_config.yaml": cfg.to_yaml()})
    return folders


def _python_snippets(card_text: str) -> list[str]:
    import re

    return re.findall(r"```python\n(.*?)```", card_text, flags=re.S)


@pytest.mark.parametrize("kind", ["CLIPModel", "CLIPVisionModelWithProjection", "CLIPVisionModel"])
def test_every_card_snippet_runs(three_kinds, kind, tmp_path, monkeypatch):
    """Every python block of the generated card runs on the Hub folder (its repo id pointed at the folder)."""
    import numpy as np
    from PIL import Image

    from aft_hf.hub import prepare_hub_folder

    out = prepare_hub_folder(three_kinds[kind], tmp_path / "hub", repo_id=REPO)
    snippets = _python_snippets((out / "README.md").read_text())
    assert len(snippets) == 2  # transformers and aft_hf
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save("cat.jpg")
    for code in snippets:
        namespace: dict = {}
        exec(compile(code.replace(f'"{REPO}"', repr(str(out))), f"<{kind} card>", "exec"), namespace)
        assert namespace.get("embeddings") is not None or namespace.get("features") is not None
        if "features" in namespace:  # the LLaVA features: (1, patches, width)
            assert namespace["features"].shape[1] == (32 // 8) ** 2


def test_bare_vision_tower_card_says_what_it_is(three_kinds, tmp_path):
    from aft_hf.hub import prepare_hub_folder

    text = (prepare_hub_folder(three_kinds["CLIPVisionModel"], tmp_path / "hub", repo_id=REPO)
            / "README.md").read_text()
    assert "a bare image tower (`CLIPVisionModel`" in text
    assert "CLIPVisionModelWithProjection" not in text  # it would load a random visual_projection
    assert "export-openclip" not in text  # which refuses a folder without projection
    assert "patch-token features" in text and "penultimate layer" in text  # the objective that was trained
    assert 'load_image_encoder("me/tiny-aft", embedding="patch_tokens")' in text
    full = (prepare_hub_folder(three_kinds["CLIPModel"], tmp_path / "full", repo_id=REPO) / "README.md").read_text()
    assert "export-openclip" in full and "patch-token" not in full and "a full `CLIPModel`" in full
