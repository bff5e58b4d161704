"""One-line refusals of evaluate/explain/export-openclip: the embedding width of a bare tower, a multi-process
launch, and transformers' load-report table never after (or instead of) the error."""

import logging

import pytest
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from aft_hf.cli import main
from aft_hf.load_report import REPORTING_LOGGER, held_load_report
from tests.image_helpers import write_png_folder


@pytest.fixture(scope="module")
def bare48(tmp_path_factory):
    """A bare CLIPVisionModel 48 wide whose config keeps the class default projection_dim 32 (no such layer)."""
    path = tmp_path_factory.mktemp("bare48") / "tower"
    config = CLIPVisionConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    CLIPVisionModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _last_line(err: str) -> str:
    return [line for line in err.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def bare32(tmp_path_factory):
    """A bare CLIPVisionModel exactly as wide (32) as the tiny CLIP's text embedding."""
    path = tmp_path_factory.mktemp("bare32") / "tower"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.mark.parametrize("bare", ["bare48", "bare32"])
def test_evaluate_refuses_zero_shot_on_a_bare_tower_whatever_its_width(bare, request, tiny_clip_path, tmp_path, capfd):
    """A CLIPVisionModel's pooled output is not in the text tower's space: refused before any score, also where its
    width happens to equal the text tower's (once a matmul failure at 48 wide, a silent meaningless score at 32)."""
    bare48 = request.getfixturevalue(bare)
    data = write_png_folder(tmp_path / "imgs", 2)
    rc = main(["evaluate", "--model", str(bare48), "--text-model", str(tiny_clip_path), "--dataset", "imagefolder",
               "--data-dir", str(data), "--metrics", "zeroshot", "--device", "cpu", "--out", str(tmp_path / "ev")])
    assert rc == 2
    line = _last_line(capfd.readouterr().err)
    assert "is a CLIPVisionModel without visual_projection: its pooled output is not in the text tower's" in line


@pytest.mark.parametrize("command", ["evaluate", "explain"])
def test_multi_process_launch_is_refused(command, tiny_clip_path, tmp_path, monkeypatch, capsys):
    """The issue: under a 2-process accelerate launch evaluate ran twice and wrote the same files."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    data = write_png_folder(tmp_path / "imgs", 2)
    args = (["--dataset", "imagefolder", "--data-dir", str(data)] if command == "evaluate" else ["--images", str(data)])
    rc = main([command, "--model", str(tiny_clip_path), *args, "--device", "cpu", "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    expected = ("run in one process only, but 2 processes were launched" if command == "evaluate"  # its default
                else f"aft-hf {command} runs in one process, but it was launched as 2")  # metrics include maps
    assert expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_export_refusal_is_the_last_line_without_the_load_table(bare48, tmp_path, capfd):
    """The issue: the one-line error arrived behind transformers' LOAD REPORT table."""
    assert main(["export-openclip", str(bare48), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err
    assert _last_line(err).startswith("aft-hf export-openclip: error:") and "no visual projection" in _last_line(err)


def test_export_of_a_missing_folder_says_it_does_not_exist(tmp_path, capfd):
    assert main(["export-openclip", str(tmp_path / "nope_folder"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert f"'{tmp_path / 'nope_folder'}' does not exist" in _last_line(capfd.readouterr().err)
    (tmp_path / "empty").mkdir()
    assert main(["export-openclip", str(tmp_path / "empty"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "is not a transformers model folder (no config.json)" in _last_line(capfd.readouterr().err)


def test_model_refusal_is_the_last_line_without_the_load_table(bare48, tmp_path, capfd):
    """A folder that says CLIPVisionModelWithProjection but holds no projection: refused, in one last line."""
    import json
    import shutil

    folder = tmp_path / "claims_projection"
    shutil.copytree(bare48, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["CLIPVisionModelWithProjection"]
    (folder / "config.json").write_text(json.dumps(config))
    data = write_png_folder(tmp_path / "imgs", 2)
    assert main(["explain", "--model", str(folder), "--images", str(data), "--reference-image",
                 str(next(data.rglob("*.png"))), "--device", "cpu", "--out", str(tmp_path / "o")]) == 2
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err
    assert "misses the weights visual_projection.weight" in _last_line(err)


def test_held_report_is_emitted_when_nothing_is_refused():
    logger = logging.getLogger(REPORTING_LOGGER)
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        with held_load_report():
            logger.warning("X LOAD REPORT from: somewhere")
            assert seen == []  # held
        assert seen == ["X LOAD REPORT from: somewhere"]
        seen.clear()
        with pytest.raises(ValueError), held_load_report():
            logger.warning("Y LOAD REPORT from: elsewhere")
            raise ValueError("refused")
        assert seen == []  # dropped: the refusal says it
    finally:
        logger.removeHandler(handler)


def test_a_vlm_given_as_model_is_named_before_any_text_tower_advice(tmp_path, capfd):
    """A LLaVA folder is no CLIP: said at once, not "pass --text-model" first and the real problem after."""
    from tests.graft_helpers import save_llava

    llava = save_llava(tmp_path / "llava")
    (tmp_path / "imgs").mkdir()
    rc = main(["evaluate", "--model", str(llava), "--dataset", str(tmp_path / "imgs"), "--metrics", "zeroshot",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "is a 'llava' model; aft_hf fine-tunes CLIP and SigLIP" in _last_line(capfd.readouterr().err)
