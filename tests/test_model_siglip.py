"""SigLIP towers (issue 21 point 3, the part done): loading with SigLIP's own normalisation and pooled
(attention-pooling head) embedding, no class token, training, export at any size, and grafting into
a LLaVA whose tower is SigLIP, sigmoid zero-shot scores as the pipeline gives them, every explain method
and evaluate."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from aft_hf.cli import main
from aft_hf.config import load_config
from aft_hf.graft import graft
from aft_hf.model import ModelLoadError, export_pretrained, load_image_encoder, save_tiny_siglip
from aft_hf.train import train
from tests.graft_helpers import IMAGE_TOKEN, tensors, text_cfg
from tests.image_helpers import write_png_folder


@pytest.fixture(scope="module")
def siglip48(tmp_path_factory):
    return save_tiny_siglip(tmp_path_factory.mktemp("siglip") / "model", seed=4, image_size=48, patch_size=8)


@pytest.mark.slow
def test_siglip_encoder_is_the_pooled_head_output_with_its_own_normalisation(siglip48):
    encoder = load_image_encoder(str(siglip48))
    assert encoder.family == "siglip" and isinstance(encoder.vision, SiglipVisionModel)
    assert encoder.mean.flatten().tolist() == [0.5] * 3 and encoder.std.flatten().tolist() == [0.5] * 3
    assert encoder.num_prefix_tokens == 0 and not encoder.has_projection
    pixels = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        full = SiglipModel.from_pretrained(siglip48).get_image_features(pixel_values=(pixels - 0.5) / 0.5)
        torch.testing.assert_close(encoder(pixels), F.normalize(full.pooler_output, dim=-1), rtol=1e-5, atol=1e-6)
    tokens = load_image_encoder(str(siglip48), embedding="patch_tokens")
    assert tokens(pixels).shape == (2, 36 * 32)  # all 36 tokens are patches: nothing dropped


def test_a_siglip_tower_without_its_head_has_no_pooled_embedding(tmp_path):
    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=48, patch_size=8, vision_use_head=False)
    SiglipVisionModel(cfg).save_pretrained(tmp_path / "headless")
    with pytest.raises(ModelLoadError, match=r"no pooled embedding: .* \(--model.embedding patch_tokens\)"):
        load_image_encoder(str(tmp_path / "headless"))
    assert load_image_encoder(str(tmp_path / "headless"), embedding="patch_tokens").image_size == 48


@pytest.mark.slow
def test_train_and_export_a_siglip_at_64_px(siglip48, tmp_path):
    torch.set_num_threads(1)
    data = write_png_folder(tmp_path / "imgs", 8, size=56)
    cfg = load_config(None, [
        "--model.name_or_path", str(siglip48), "--model.image_size", "64", "--data.dataset", str(data),
        "--output_dir", str(tmp_path / "out"), "--optim.batch_size", "4", "--max_steps", "2", "--warmup_steps", "0",
        "--lr", "1e-2", "--attack.steps", "1", "--logging.report_to", "none", "--checkpointing_steps", "100"])
    final = train(cfg)
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "siglip" and config["vision_config"]["image_size"] == 64
    processor = json.loads((final / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "SiglipImageProcessor" and processor["image_mean"] == [0.5] * 3
    assert processor["size"] == {"height": 64, "width": 64} and "crop_size" not in processor
    model, info = SiglipModel.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert model.vision_model.embeddings.position_embedding.weight.shape == (64, 32)
    base = SiglipModel.from_pretrained(siglip48)
    assert torch.equal(model.text_model.embeddings.token_embedding.weight,
                       base.text_model.embeddings.token_embedding.weight)
    assert not torch.equal(model.vision_model.head.probe, base.vision_model.head.probe)  # the head was trained
    assert load_image_encoder(str(final)).image_size == 64


def test_zero_shot_pipeline_gives_the_sigmoid_scores_of_the_text_tower(siglip48):
    """The pipeline (SigLIP's processor: resize, no crop; fixed-length text padding) and aft_hf's text tower
    and encoder give the same per-class sigmoid scores on the same image."""
    from PIL import Image
    from transformers import pipeline

    from aft_hf.explain.targets import load_text_tower

    labels = ["circle", "star", "square"]
    classifier = pipeline("zero-shot-image-classification", model=str(siglip48))
    image = Image.fromarray((torch.rand(60, 80, 3) * 255).byte().numpy())
    theirs = {r["label"]: r["score"] for r in classifier(image, candidate_labels=labels)}
    pixels = classifier.image_processor(image, return_tensors="pt")["pixel_values"] * 0.5 + 0.5
    text = load_text_tower(str(siglip48))
    assert text.sigmoid and text.family == "siglip" and text.padding == "max_length"
    with torch.no_grad():
        prompts = [f"This is a photo of {c}." for c in labels]  # the pipeline's default hypothesis template
        ours = text.scores(load_image_encoder(str(siglip48))(pixels), text.encode(prompts))[0]
    assert 0 < sum(theirs.values()) and all(0 < v < 1 for v in theirs.values())
    for label, score in zip(labels, ours.tolist()):
        assert theirs[label] == pytest.approx(score, rel=1e-4, abs=1e-6), label


def test_every_explain_method_on_a_siglip_tower(siglip48):
    from aft_hf.explain import available_methods, explain

    encoder = load_image_encoder(str(siglip48))
    images = torch.rand(2, 3, 48, 48)
    target = F.normalize(torch.randn(2, 32), dim=-1)
    maps = explain(encoder, images, target, list(available_methods()), n_steps=4, nt_samples=2, progress=False)
    for name, m in maps.items():
        assert m.shape == (2, 1, 48, 48) and torch.isfinite(m).all(), name
    # the attention map is the pooling head's probe attention over the 6x6 patches (no class token)
    captured = {}
    head = encoder.vision.head.attention
    def keep(module, inputs, output):
        captured["w"] = output[1]

    handle = head.register_forward_hook(keep)
    with torch.no_grad():
        encoder(images)
    handle.remove()
    raw = explain(encoder, images, None, "attention", postprocess=False, progress=False)["attention"]
    expected = F.interpolate(captured["w"].view(2, 1, 6, 6), size=(48, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_cli_evaluate_a_siglip_model(siglip48, tmp_path):
    from aft_hf.data import write_shapes_imagefolder

    data = write_shapes_imagefolder(tmp_path / "shapes", num_images=6, size=48)
    rc = main(["evaluate", "--model", str(siglip48), "--dataset", str(data), "--max-samples", "6",
               "--metrics", "zeroshot", "robust", "deletion", "--methods", "saliency", "gradcam", "attention",
               "--attack-steps", "2", "--deletion-steps", "3", "--out", str(tmp_path / "ev")])
    assert rc == 0
    metrics = json.loads((tmp_path / "ev" / "report.json").read_text())["metrics"]
    assert 0 <= metrics["zeroshot_top1"] <= 1 and max(metrics["robust_top1"].values()) <= metrics["zeroshot_top1"]


def _siglip_tower_cfg():
    return SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=48, patch_size=8, vision_use_head=False)


@pytest.mark.slow
def test_graft_a_siglip_into_a_llava_with_a_headless_siglip_tower(siglip48, tmp_path):
    aft = export_pretrained(load_image_encoder(str(siglip48)), tmp_path / "aft")
    torch.manual_seed(6)
    cfg = LlavaConfig(vision_config=_siglip_tower_cfg(), text_config=text_cfg(), image_token_index=IMAGE_TOKEN,
                      vision_feature_layer=-1, vision_feature_select_strategy="full")
    LlavaForConditionalGeneration(cfg).save_pretrained(tmp_path / "llava", max_shard_size="40KB")
    report = graft(aft, tmp_path / "llava", tmp_path / "out")
    assert report["left_out"] and all(".head." in k for k in report["left_out"])  # the VLM drops the head
    from aft_hf.graft import GraftError
    from tests.graft_helpers import save_llava

    with pytest.raises(GraftError, match=r"model_type siglip_vision_model vs clip_vision_model; image_size 48 vs 64 "
                                         r"\(fine-tune the VLM's own tower: docs/vlm.md\)$"):
        graft(aft, save_llava(tmp_path / "clip_llava", image_size=64), tmp_path / "bad")  # no size advice: a CLIP
    root = report["tower_root"]
    before, after = tensors(tmp_path / "llava"), tensors(tmp_path / "out")
    tuned = SiglipModel.from_pretrained(aft).vision_model.state_dict()
    for name, (tensor, raw) in after.items():
        if name.startswith(root):
            assert torch.equal(tensor, tuned[name[len(root):]]), name
        else:
            assert raw == before[name][1], name
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor([[1] + [IMAGE_TOKEN] * 36 + [5]])  # SigLIP: 36 patch tokens, no class token to drop
    with torch.no_grad():
        out = model.generate(input_ids=ids, pixel_values=torch.rand(1, 3, 48, 48), max_new_tokens=2, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 2)


def test_graft_into_llava_onevision_finds_its_siglip_tower(siglip48, tmp_path):
    aft = export_pretrained(load_image_encoder(str(siglip48)), tmp_path / "aft")
    torch.manual_seed(7)
    cfg = LlavaOnevisionConfig(vision_config=_siglip_tower_cfg(), text_config=text_cfg(),
                               image_token_index=IMAGE_TOKEN, image_grid_pinpoints=[[48, 48]], vision_feature_layer=-1)
    LlavaOnevisionForConditionalGeneration(cfg).save_pretrained(tmp_path / "ov")
    report = graft(aft, tmp_path / "ov", tmp_path / "out")
    assert report["grafted"] == len(tensors(tmp_path / "aft")) - len(report["left_out"]) - sum(
        1 for k in tensors(tmp_path / "aft") if k.startswith(("text_model.", "logit_")))
    LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2", "huber", "elastic", "group"])
def test_train_a_siglip_with_each_norm_and_zero_shot_eval(siglip48, tmp_path, norm):
    from aft_hf.data import write_shapes_imagefolder

    torch.set_num_threads(1)
    data = write_shapes_imagefolder(tmp_path / "shapes", num_images=8, size=48)
    cfg = load_config(None, [
        "--model.name_or_path", str(siglip48), "--data.dataset", str(data), "--output_dir", str(tmp_path / "out"),
        "--optim.batch_size", "4", "--max_steps", "1", "--warmup_steps", "0", "--attack.norm", norm,
        "--attack.steps", "1", "--logging.report_to", "none", "--checkpointing_steps", "100",
        "--eval.every_steps", "1", "--eval.num_samples", "4", "--eval.attack_steps", "1",
        *(["--attack.eps2", "0.5"] if norm in ("huber", "elastic") else [])])
    final = train(cfg)
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert any("zeroshot" in key for key in summary["eval_history"][-1]), summary["eval_history"][-1]
    assert SiglipModel.from_pretrained(final).config.vision_config.image_size == 48


def test_a_siglip_tower_without_a_processor_gets_siglip_normalisation(siglip48, tmp_path):
    vision = load_image_encoder(str(siglip48)).vision
    vision.save_pretrained(tmp_path / "tower")  # weights and config only, no preprocessor_config.json
    encoder = load_image_encoder(str(tmp_path / "tower"))
    assert encoder.family == "siglip" and encoder.mean.flatten().tolist() == [0.5] * 3


@pytest.mark.slow
@pytest.mark.parametrize("vision_only", [False, True], ids=["SiglipModel", "SiglipVisionModel"])
def test_push_builds_a_siglip_card_whose_snippets_run(siglip48, tmp_path, monkeypatch, vision_only):
    """push --dry-run on a SigLIP export: the card names the SigLIP class and every python block runs on the folder."""
    import re

    import numpy as np
    from PIL import Image

    from aft_hf.hub import prepare_hub_folder

    encoder = load_image_encoder(str(siglip48))
    folder = tmp_path / "final"
    if vision_only:
        encoder.vision.save_pretrained(folder)
        encoder.image_processor.save_pretrained(folder)
    else:
        export_pretrained(encoder, folder)
    out = prepare_hub_folder(folder, tmp_path / "hub", repo_id="me/siglip-aft")
    text = (out / "README.md").read_text()
    cls = "SiglipVisionModel" if vision_only else "SiglipModel"
    assert f"`{cls}`" in text and "SigLIP ViT" in text and "CLIPModel" not in text
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save("cat.jpg")
    snippets = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(snippets) == 2  # transformers and aft_hf
    for code in snippets:
        namespace: dict = {}
        exec(compile(code.replace('"me/siglip-aft"', repr(str(out))), f"<{cls} card>", "exec"), namespace)
        assert namespace.get("embeddings") is not None
    # the patch tokens VLMs read, from the full model too; and SigLIP's images are not cropped
    transformers_block = snippets[0]
    namespace = {}
    exec(compile(transformers_block.replace('"me/siglip-aft"', repr(str(out))), f"<{cls} card>", "exec"), namespace)
    vision = getattr(namespace["model"].config, "vision_config", namespace["model"].config)
    assert namespace["features"].shape[:2] == (1, (vision.image_size // vision.patch_size) ** 2)  # every patch
    assert "resized (no crop)" in snippets[1] and "cropped" not in snippets[1]


def test_siglip_images_are_resized_without_a_crop_as_its_processor_does(siglip48):
    """Training, evaluation and explain prepare images with the checkpoint's own processor: SigLIP squashes."""
    import numpy as np
    from PIL import Image

    from aft_hf.data.images import image_geometry, to_tensor

    encoder = load_image_encoder(str(siglip48))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 60, 3), dtype=np.uint8))
    ours = to_tensor(image_geometry(encoder)(image))
    theirs = encoder.image_processor(images=image, do_rescale=True, do_normalize=False, return_tensors="pt")
    assert ours.shape[-2:] == (encoder.image_size, encoder.image_size)
    assert (ours - theirs["pixel_values"][0]).abs().max() < 1e-5  # a centre crop would keep only the middle third


@pytest.mark.slow
def test_the_card_of_a_headless_siglip_tower_trained_on_its_last_layer(tmp_path, monkeypatch):
    """A LLaVA-OneVision-style tower (no pooling head) trained on hidden state -1: the card used to promise an
    attention-pooling head, a class token dropped and the penultimate layer, and its snippet's pooler_output was None."""
    import re

    import numpy as np
    from PIL import Image
    from transformers import SiglipImageProcessorPil, SiglipVisionModel

    from aft_hf.hub import prepare_hub_folder

    torch.set_num_threads(1)
    torch.manual_seed(0)
    SiglipVisionModel(_siglip_tower_cfg()).save_pretrained(tmp_path / "tower")
    SiglipImageProcessorPil(size={"height": 48, "width": 48}).save_pretrained(tmp_path / "tower")
    cfg = load_config(None, [
        "--model.name_or_path", str(tmp_path / "tower"), "--model.embedding", "patch_tokens", "--model.feature_layer",
        "-1", "--data.dataset", str(write_png_folder(tmp_path / "imgs", 4, size=48)), "--output_dir",
        str(tmp_path / "out"), "--optim.batch_size", "4", "--max_steps", "1", "--warmup_steps", "0", "--attack.steps",
        "1", "--logging.report_to", "none", "--checkpointing_steps", "100"])
    out = prepare_hub_folder(train(cfg), tmp_path / "hub", repo_id="me/ov-tower-aft")
    text = (out / "README.md").read_text()
    assert "without its attention-pooling head" in text and "with its attention-pooling head" not in text
    assert "class token dropped" not in text and "hidden_states[-2]" not in text and "pooler_output" not in text
    assert "every patch: SigLIP has no class token" in text  # the method section
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save("cat.jpg")
    transformers_block = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    namespace: dict = {}
    exec(compile(transformers_block.replace('"me/ov-tower-aft"', repr(str(out))), "<card>", "exec"), namespace)
    features, hidden = namespace["features"], namespace["out"].hidden_states
    assert features.shape == (1, 36, 32) and torch.equal(features, hidden[-1])  # hidden state -1: what AFT trained
