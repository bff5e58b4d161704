"""aft-hf graft on tiny random LLaVA models built here (48-px CLIP tower, patch 8, tiny Llama): the tower
holds the AFT weights, every other tensor and file is the input's byte for byte, generate() runs."""

import filecmp
import json

import pytest
import torch
from transformers import (
    CLIPModel,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
)

from aft_hf.cli import main
from aft_hf.graft import ANCHOR, GraftError, _header, graft
from aft_hf.model import export_pretrained, load_image_encoder, save_tiny_clip
from tests.graft_helpers import IMAGE_TOKEN, save_llava, tensors, text_cfg, vision_cfg


@pytest.fixture(scope="module")
def aft48(tmp_path_factory):
    """An AFT export (full CLIPModel, 48 px, patch 8) whose vision weights differ from any random tower."""
    root = tmp_path_factory.mktemp("graft")
    base = save_tiny_clip(root / "base", seed=5, image_size=48, patch_size=8)
    encoder = load_image_encoder(str(base))
    with torch.no_grad():
        for p in encoder.vision.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return export_pretrained(encoder, root / "aft")


def tower_root(names):
    (root,) = [n[:-len(ANCHOR)] for n in names if n.endswith(ANCHOR)]
    return root


def check_graft(src, out, aft_folder):
    """The tower equals the AFT weights (cast to the VLM's dtype); everything else is the input's bytes."""
    before, after = tensors(src), tensors(out)
    assert before.keys() == after.keys()
    root = tower_root(before)
    aft = CLIPModel.from_pretrained(aft_folder).vision_model.state_dict()
    grafted = 0
    for name, (tensor, raw) in after.items():
        if name.startswith(root) and not name.endswith("position_ids"):  # a saved buffer is kept as it is
            expected = aft[name[len(root):]].to(tensor.dtype)
            assert torch.equal(tensor, expected), name
            assert not torch.equal(before[name][0], tensor), name  # it really changed
            grafted += 1
        else:
            assert raw == before[name][1], name
    assert grafted == len(aft)
    for file in src.iterdir():  # config, processor, chat template, index, generation config: unchanged
        if file.suffix != ".safetensors":
            assert filecmp.cmp(file, out / file.name, shallow=False), file.name
    for file in src.glob("*.safetensors"):  # same headers: same names, shapes, dtypes, offsets
        assert _header(file) == _header(out / file.name)
    return root


def run_generate(folder, dtype=torch.float32):
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype).eval()
    ids = torch.tensor([[1] + [IMAGE_TOKEN] * 36 + [5, 6]])  # 6x6 patch tokens, CLS dropped
    with torch.no_grad():
        generated = model.generate(input_ids=ids, pixel_values=torch.rand(1, 3, 48, 48).to(dtype),
                                   max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 3)
    return model


@pytest.mark.slow
def test_graft_into_a_single_file_fp32_llava(aft48, tmp_path):
    src = save_llava(tmp_path / "llava")
    report = graft(aft48, src, tmp_path / "out")
    root = check_graft(src, tmp_path / "out", aft48)
    assert report["tower_root"] == root and report["grafted"] == 39
    assert report["shards_patched"] == ["model.safetensors"]
    assert report["left_out"] == ["visual_projection.weight"]
    assert json.loads((tmp_path / "out" / "aft_graft.json").read_text())["left_out"] == ["visual_projection.weight"]
    model = run_generate(tmp_path / "out")
    tuned = CLIPModel.from_pretrained(aft48).vision_model.state_dict()
    for name, value in model.model.vision_tower.state_dict().items():
        assert torch.equal(value, tuned[name.removeprefix("vision_model.")]), name


def test_graft_into_a_sharded_fp16_llava(aft48, tmp_path):
    src = save_llava(tmp_path / "llava16", dtype=torch.float16, shard="40KB")
    assert len(list(src.glob("*.safetensors"))) > 2 and (src / "model.safetensors.index.json").is_file()
    report = graft(aft48, src, tmp_path / "out")
    check_graft(src, tmp_path / "out", aft48)
    assert len(report["shards_patched"]) >= 1
    for name, (tensor, _) in tensors(tmp_path / "out").items():
        assert tensor.dtype == torch.float16, name
    run_generate(tmp_path / "out", torch.float32)


def test_graft_into_llava_next_finds_its_tower(aft48, tmp_path):
    torch.manual_seed(2)
    cfg = LlavaNextConfig(vision_config=vision_cfg(), text_config=text_cfg(), image_token_index=IMAGE_TOKEN,
                          image_grid_pinpoints=[[48, 48], [48, 96]])
    LlavaNextForConditionalGeneration(cfg).save_pretrained(tmp_path / "next")
    graft(aft48, tmp_path / "next", tmp_path / "out")
    check_graft(tmp_path / "next", tmp_path / "out", aft48)
    LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "out")


@pytest.mark.slow
def test_a_geometry_mismatch_is_refused_in_one_line_then_fixed_by_image_size(aft48, tmp_path, capsys):
    src = save_llava(tmp_path / "llava64", image_size=64)
    rc = main(["graft", str(aft48), "--into", str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # progress bars of save_llava come before
    assert rc == 2 and err.startswith("aft-hf graft: error: the AFT model does not fit")
    assert "image_size 48 vs 64" in err and "--model.image_size 64" in err
    assert not (tmp_path / "out").exists()
    # the same AFT model at the VLM's size (position embeddings interpolated once) grafts
    at64 = export_pretrained(load_image_encoder(str(aft48), image_size=64), tmp_path / "aft64")
    rc = main(["graft", str(at64), "--into", str(src), "--out", str(tmp_path / "out")])
    assert rc == 0 and "left out" in capsys.readouterr().out
    check_graft(src, tmp_path / "out", at64)


def test_a_missing_feature_layer_or_a_non_vlm_is_refused(aft48, tmp_path):
    src = save_llava(tmp_path / "llava", vision_feature_layer=-4)  # a 2-layer tower has hidden states -3..2
    with pytest.raises(GraftError, match="vision_feature_layer -4 does not exist in a 2-layer tower"):
        graft(aft48, src, tmp_path / "out")
    with pytest.raises(GraftError, match="is a 'clip' model, not a VLM"):
        graft(aft48, save_tiny_clip(tmp_path / "clip", image_size=48), tmp_path / "out2")


def test_graft_never_replaces_a_foreign_folder(aft48, tmp_path):
    src = save_llava(tmp_path / "llava")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(Exception, match="not empty"):
        graft(aft48, src, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_graft_never_loads_a_model_and_refuses_bin_checkpoints_and_unknown_ids(aft48, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    src = save_llava(tmp_path / "llava")

    def refuse(*args, **kwargs):
        raise AssertionError("graft must stream tensors, not load a model")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))
    graft(aft48, src, tmp_path / "out")  # tensor by tensor, no model instantiated
    monkeypatch.undo()
    binary = tmp_path / "bin"
    binary.mkdir()
    for name in ("config.json", "generation_config.json"):
        (binary / name).write_bytes((src / name).read_bytes())
    torch.save({}, binary / "pytorch_model.bin")
    with pytest.raises(GraftError, match="holds pytorch_model.*bin weights; graft rewrites safetensors only"):
        graft(aft48, binary, tmp_path / "out2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GraftError, match="could not get VLM 'nobody/no-such-llava'"):
        graft(aft48, "nobody/no-such-llava", tmp_path / "out3")
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_graft_into_the_hub_layout_of_llava_hf(aft48, tmp_path):
    """llava-hf checkpoints on the Hub name the tower `vision_tower.vision_model.` and older ones save its
    `position_ids` buffer: the root is found from the tensor names, the buffer is kept as it is."""
    from safetensors.torch import load_file, save_file

    src = save_llava(tmp_path / "saved")
    state = load_file(src / "model.safetensors")
    hub = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v
           for k, v in state.items()}
    hub["vision_tower.vision_model.embeddings.position_ids"] = torch.arange(37).unsqueeze(0)
    (tmp_path / "hub").mkdir()
    save_file(hub, tmp_path / "hub" / "model.safetensors", metadata={"format": "pt"})
    for file in src.iterdir():
        if file.suffix != ".safetensors":
            (tmp_path / "hub" / file.name).write_bytes(file.read_bytes())
    report = graft(aft48, tmp_path / "hub", tmp_path / "out")
    assert report["tower_root"] == "vision_tower.vision_model."
    after = tensors(tmp_path / "out")
    assert torch.equal(after["vision_tower.vision_model.embeddings.position_ids"][0], torch.arange(37).unsqueeze(0))
    check_graft(tmp_path / "hub", tmp_path / "out", aft48)
    run_generate(tmp_path / "out")


def test_a_tower_that_computes_another_function_is_refused(aft48, tmp_path):
    """Same shapes, another function: another activation, or the VLM's processor normalising pixels with another
    mean / std than the AFT model was trained with. The grafted weights would compute what nobody trained."""
    torch.manual_seed(1)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**{**vision_cfg().to_dict(), "hidden_act": "gelu"}),
                      text_config=text_cfg(), image_token_index=IMAGE_TOKEN)
    LlavaForConditionalGeneration(cfg).save_pretrained(tmp_path / "gelu")
    with pytest.raises(GraftError, match="hidden_act quick_gelu vs gelu"):
        graft(aft48, tmp_path / "gelu", tmp_path / "out")
    src = save_llava(tmp_path / "llava")
    processor = json.loads((src / "preprocessor_config.json").read_text())
    (src / "preprocessor_config.json").write_text(json.dumps({**processor, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    with pytest.raises(GraftError, match=r"pixel mean / std .* vs \(0\.5, 0\.5"):
        graft(aft48, src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_patch_token_runs_graft_only_where_the_vlm_reads_the_layer_they_trained(aft48, tmp_path):
    """A ``patch_tokens`` run keeps one layer's tokens close (its recipe says which); a VLM reading another layer
    gets features that AFT never protected: refused, naming the option that fits."""
    import shutil

    import yaml

    run = tmp_path / "aft_patch"
    shutil.copytree(aft48, run)
    (run / "aft_config.yaml").write_text(yaml.safe_dump({"model": {"embedding": "patch_tokens", "feature_layer": -2}}))
    with pytest.raises(GraftError, match="layer -2 close but the VLM reads vision_feature_layer -1: train with "
                                         "--model.feature_layer -1"):
        graft(run, save_llava(tmp_path / "last", vision_feature_layer=-1), tmp_path / "out")
    assert graft(run, save_llava(tmp_path / "penultimate", vision_feature_layer=-2), tmp_path / "ok")["grafted"] > 0
    assert graft(run, save_llava(tmp_path / "as_positive", vision_feature_layer=1), tmp_path / "ok1")["grafted"] > 0
    # a VLM that concatenates several layers reads the untrained one too
    with pytest.raises(GraftError, match=r"layer -2 close but the VLM also reads layer\(s\) \[-1\]"):
        graft(run, save_llava(tmp_path / "both", vision_feature_layer=[-2, -1]), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert graft(run, save_llava(tmp_path / "listed", vision_feature_layer=[-2]), tmp_path / "ok2")["grafted"] > 0
    # a VLM that reads the class token too (strategy 'full') reads a token the run left free (it was accepted)
    with pytest.raises(GraftError, match="reads the class token too \\(vision_feature_select_strategy 'full'\\)"):
        graft(run, save_llava(tmp_path / "full", vision_feature_select_strategy="full"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert graft(aft48, save_llava(tmp_path / "full_pooled", vision_feature_select_strategy="full"),
                 tmp_path / "ok3")["grafted"] > 0  # a pooled run is not tied to the tokens the VLM reads


def test_a_vlm_is_no_aft_folder(tmp_path):
    """Grafting a LLaVA's tower into another LLaVA would pass the geometry checks and list the whole language model
    as "left out": the source must be a CLIP or SigLIP export."""
    src = save_llava(tmp_path / "llava")
    with pytest.raises(GraftError, match="is a 'llava' model, not a CLIP or SigLIP export"):
        graft(src, save_llava(tmp_path / "other", seed=2), tmp_path / "out")


def test_a_training_run_folder_points_to_its_export(aft48, tmp_path):
    """`graft out/run` (the run, not `out/run/final`) used to end in transformers' "Unrecognized model" message."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(aft48, run / "final")
    (run / "checkpoints").mkdir()
    with pytest.raises(GraftError, match=f"is a training run's folder; give its exported model, '{run / 'final'}'"):
        graft(run, save_llava(tmp_path / "llava"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_folders_files_and_checkpoints_are_named_as_such(aft48, tmp_path, monkeypatch):
    """A mistyped relative folder used to end in the Hub cache's paragraph about snapshots, a training checkpoint in
    transformers' "Unrecognized model"."""
    import shutil

    llava = save_llava(tmp_path / "llava")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GraftError, match=r"^could not get AFT folder 'out/nope': no local folder of that name, and "
                                         r"HF_HUB_OFFLINE is set \(a Hub id loads offline only from the Hub cache\)$"):
        graft("out/nope", llava, tmp_path / "out")
    with pytest.raises(GraftError, match=f"^VLM '{llava / 'config.json'}' is a file; give the folder that holds it"):
        graft(aft48, llava / "config.json", tmp_path / "out")
    step = tmp_path / "run" / "checkpoints" / "step_00000006"
    shutil.copytree(aft48, step)
    (step / "config.json").unlink()
    with pytest.raises(GraftError, match="is not a model folder \\(no config.json\\): a training checkpoint holds no "
                                         "exported model; write one with `aft-hf export .*step_00000006 --out DIR`, "
                                         "or give the run's final/ folder"):
        graft(step, llava, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_graft_record_names_local_folders_without_their_paths(aft48, tmp_path):
    """aft_graft.json travels with the VLM folder a user uploads: it must not publish the author's file system."""
    from aft_hf.graft import REPORT

    report = graft(aft48, save_llava(tmp_path / "llava"), tmp_path / "out")
    assert report["aft_folder"] == str(aft48)  # in memory (and printed) as given
    text = (tmp_path / "out" / REPORT).read_text()
    saved = json.loads(text)
    assert saved["aft_folder"] == f"local:{aft48.name}" and saved["vlm"] == "local:llava"
    assert str(tmp_path) not in text and saved["grafted"] == report["grafted"]


@pytest.mark.parametrize("command", ["evaluate", "explain", "export-openclip", "push"])
def test_every_command_points_from_a_run_folder_to_its_export(aft48, tmp_path, capsys, command):
    """graft said 'give its exported model, out/run/final'; evaluate, explain, export-openclip and push only said
    'not a model folder': one hint everywhere (aft_hf.model.run_folder_hint)."""
    import shutil

    from aft_hf.cli import main

    run = tmp_path / "run"
    shutil.copytree(aft48, run / "final")
    (run / "checkpoints" / "step_00000002").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (48, 48)).save(tmp_path / "img.png")
    args = {"evaluate": ["--model", str(run), "--dataset", "builtin:shapes", "--out", str(tmp_path / "o")],
            "explain": ["--model", str(run), "--images", str(tmp_path / "img.png"), "--out", str(tmp_path / "o")],
            "export-openclip": [str(run), "--out", str(tmp_path / "o.safetensors")],
            "push": [str(run), "--repo-id", "me/x", "--dry-run", "--out", str(tmp_path / "o")]}[command]
    assert main([command, *args]) == 2
    assert f"is a training run's folder; give its exported model, '{run / 'final'}'" in capsys.readouterr().err
    if command == "evaluate":
        assert main([command, "--model", str(run / "checkpoints" / "step_00000002"), *args[2:]]) == 2
        err = capsys.readouterr().err
        assert "a training checkpoint holds no exported model; write one with `aft-hf export " in err
        assert "step_00000002 --out DIR`, or give the run's final/ folder" in err
