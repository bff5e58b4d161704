"""A new tower family is one entry in ``aft_hf.model.FAMILIES``: MetaCLIP 2 (transformers' ``metaclip_2`` classes,
CLIP's architecture under other class names) loads, trains, is evaluated zero-shot and gets a model card with no
other edit."""

import json

import pytest
import torch

from aft_hf.cli import main
from aft_hf.model import CLIP_MEAN, CLIP_STD, FAMILIES, Family, clip_config, load_image_encoder


@pytest.fixture
def metaclip(tmp_path, monkeypatch, tiny_clip_path):
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessorPil,
        MetaClip2Config,
        MetaClip2Model,
        MetaClip2VisionModel,
        MetaClip2VisionModelWithProjection,
    )

    monkeypatch.setitem(FAMILIES, "metaclip_2", Family(
        "metaclip_2", "metaclip_2", "metaclip_2_vision_model", MetaClip2Model, MetaClip2VisionModelWithProjection,
        "CLIPImageProcessorPil", CLIP_MEAN, CLIP_STD, pools_class_token=True, projection=True,
        bare_vision_class=MetaClip2VisionModel))
    clip = clip_config().to_dict()
    config = MetaClip2Config(text_config=clip["text_config"], vision_config=clip["vision_config"], projection_dim=32)
    torch.manual_seed(0)
    folder = tmp_path / "metaclip"
    MetaClip2Model(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_clip_path).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _images(root):
    from PIL import Image

    for i, cls in enumerate(["cat", "dog", "cat", "dog"]):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (60 * i, 30, 90)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.slow
def test_a_family_added_as_one_entry_loads_trains_evaluates_and_publishes(metaclip, tmp_path, monkeypatch):
    encoder = load_image_encoder(str(metaclip))
    assert encoder.family == "metaclip_2" and encoder.has_projection
    assert encoder(torch.rand(2, 3, 32, 32)).shape == (2, 32)
    data = _images(tmp_path / "imgs")
    out = tmp_path / "run"
    assert main(["train", "--model.name_or_path", str(metaclip), "--data.dataset", str(data), "--max_steps", "2",
                 "--warmup_steps", "1", "--optim.batch_size", "2", "--attack.steps", "1", "--logging.report_to", "none",
                 "--output_dir", str(out)]) == 0
    assert json.loads((out / "final" / "config.json").read_text())["model_type"] == "metaclip_2"
    assert main(["evaluate", "--model", str(out / "final"), "--dataset", str(data), "--metrics", "zeroshot", "robust",
                 "--attack-steps", "1", "--eps", "1", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert 0 <= report["metrics"]["zeroshot_top1"] <= 1
    assert main(["push", str(out / "final"), "--repo-id", "me/mc", "--report", str(tmp_path / "ev" / "report.json"),
                 "--dry-run", "--out", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "a `MetaClip2Model` folder" in card and "AutoModel.from_pretrained(\"me/mc\")" in card
    assert "a `MetaClip2Model` tower is not among them" in card  # the graft's limit, said on the card
    snippet = card.split("## Usage")[1].split("```python\n")[1].split("```")[0]
    image = next((data / "cat").iterdir())
    namespace: dict = {}
    exec(snippet.replace("me/mc", str(tmp_path / "hub")).replace("cat.jpg", str(image)), namespace)  # it runs
    assert namespace["out"].pooler_output.shape[-1] == 32
