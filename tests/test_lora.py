"""LoRA through peft: only adapters train, final/ is merged and loads without peft, the adapter on
request loads with peft, a resume is bitwise, and bad settings are named."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionModelWithProjection

from aft_hf.config import ConfigError, load_config
from aft_hf.lora import LoraError, apply_lora, has_lora, save_adapter
from aft_hf.model import export_pretrained, load_image_encoder
from aft_hf.train import train
from tests.image_helpers import write_png_folder
from tests.train_helpers import Interrupt, crash_after_checkpoint

LORA = ["--lora.r", "4", "--lora.alpha", "8"]


def _cfg(model, data, out, *extra):
    return load_config(None, [
        "--model.name_or_path", str(model), "--data.dataset", str(data), "--output_dir", str(out),
        "--optim.batch_size", "8", "--max_steps", "4", "--warmup_steps", "1", "--lr", "1e-2",
        "--attack.steps", "2", "--logging.report_to", "none", "--log_every", "1", "--checkpointing_steps", "2",
        *LORA, *extra])


def _weights(folder):
    return CLIPVisionModelWithProjection.from_pretrained(folder).state_dict()


@pytest.mark.slow
def test_only_adapted_layers_change_and_final_loads_without_peft(tiny_clip_path, tmp_path, single_thread):
    data = write_png_folder(tmp_path / "imgs", 16)
    final = train(_cfg(tiny_clip_path, data, tmp_path / "run", "--lora.target_modules", "[q_proj,v_proj]"))
    base, tuned = _weights(tiny_clip_path), _weights(final)
    assert set(base) == set(tuned)  # original parameter names: no lora_A / base_layer keys
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), sorted(changed)
    assert not has_lora(CLIPVisionModelWithProjection.from_pretrained(final))


@pytest.mark.slow
def test_merged_export_and_saved_adapter_compute_the_adapted_model(tiny_clip_path, tmp_path, single_thread):
    from peft import PeftModel

    from aft_hf.config import LoraConfig

    lora = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "fc1"])
    encoder = load_image_encoder(str(tiny_clip_path))
    base_vision = encoder.frozen_copy().vision
    trainable = apply_lora(encoder.vision, lora)
    assert 0 < trainable < sum(p.numel() for p in base_vision.parameters()) / 2
    torch.manual_seed(0)
    for name, param in encoder.vision.named_parameters():
        if "lora_B" in name:  # peft starts B at 0 (a no-op adapter): give it a value to carry
            param.data.normal_(std=0.5)
    pixels = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        adapted = encoder(pixels)
    merged = load_image_encoder(str(export_pretrained(encoder, tmp_path / "final")))
    with torch.no_grad():
        assert (merged(pixels) - adapted).abs().max() < 1e-5
        assert (load_image_encoder(str(tiny_clip_path))(pixels) - adapted).abs().max() > 1e-3
    folder = save_adapter(encoder.vision, base_vision, lora, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(CLIPVisionModelWithProjection.from_pretrained(tiny_clip_path), str(folder))
    mean, std = encoder.mean, encoder.std
    with torch.no_grad():
        out = peft_model(pixel_values=(pixels - mean) / std).image_embeds
    assert (torch.nn.functional.normalize(out, dim=-1) - adapted).abs().max() < 1e-5


@pytest.mark.slow
def test_training_writes_the_adapter_on_request(tiny_clip_path, tmp_path, single_thread, monkeypatch):
    import aft_hf.outputs as outputs

    data = write_png_folder(tmp_path / "imgs", 8)
    replace_dir, moved = outputs.replace_dir, []

    def recording_replace_dir(tmp, final):  # what the export holds when it is moved into place
        moved.append(sorted(p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*")))
        return replace_dir(tmp, final)

    monkeypatch.setattr(outputs, "replace_dir", recording_replace_dir)
    previous = os.umask(0o022)
    try:
        final = train(_cfg(tiny_clip_path, data, tmp_path / "run", "--max_steps", "1", "--lora.save_adapter"))
    finally:
        os.umask(previous)
    # the adapter is part of the export moved into place at once, with the umask's modes like every other file
    assert "adapter/adapter_model.safetensors" in moved[-1]
    modes = {p.relative_to(final).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in final.rglob("*")}
    assert {m for p, m in modes.items() if (final / p).is_file()} == {"0o644"}, modes
    assert {m for p, m in modes.items() if (final / p).is_dir()} == {"0o755"}, modes
    assert (final / "adapter" / "adapter_config.json").is_file()
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    # the adapter says what it is (peft's README template would not); a local base's path is not written into it
    readme = (final / "adapter" / "README.md").read_text()
    assert "LoRA adapter of an AFT run" in readme and "PeftModel.from_pretrained" in readme
    assert json.loads((final / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    assert str(tiny_clip_path) not in readme
    # the card of the merged model says that only adapters were trained, and lists the lora settings
    from aft_hf.card import build_model_card

    card = str(build_model_card(final, "me/model"))
    assert "Only LoRA adapters were trained (peft; rank 4" in card and "the adapter alone is in `adapter/`" in card
    assert "| `lora.r` | 4 |" in card


def test_saved_adapter_names_a_hub_base_model(tiny_clip_path, tmp_path):
    """With a Hub id as the base, adapter_config.json names it (peft's base_model_name_or_path) and so does its README."""
    from aft_hf.config import LoraConfig

    encoder = load_image_encoder(str(tiny_clip_path))
    base_vision = encoder.frozen_copy().vision
    lora = LoraConfig(r=2)
    apply_lora(encoder.vision, lora)
    folder = save_adapter(encoder.vision, base_vision, lora, tmp_path / "adapter", base_model="openai/clip-vit-base-patch32")
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "openai/clip-vit-base-patch32"
    assert "from_pretrained('openai/clip-vit-base-patch32')" in (folder / "README.md").read_text()



@pytest.mark.slow
def test_lora_resume_is_bitwise(tiny_clip_path, tmp_path, monkeypatch, single_thread):
    data = write_png_folder(tmp_path / "imgs", 24)
    full = train(_cfg(tiny_clip_path, data, tmp_path / "a"))
    crash_after_checkpoint(monkeypatch, 2)
    with pytest.raises(Interrupt):
        train(_cfg(tiny_clip_path, data, tmp_path / "b"))
    monkeypatch.undo()
    resumed = train(_cfg(tiny_clip_path, data, tmp_path / "b", "--resume_from_checkpoint", "latest"))
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bare_alpha_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"--attack\.alpha.*--lora\.alpha"):
        load_config(None, ["--alpha", "2"])


def test_bad_lora_settings_are_named(tiny_clip_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["--lora.r", "-1"])
    assert "lora.r" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["--lora.r", "4", "--lora.dropout", "1.5", "--lora.target_modules", "[]"])
    assert "lora.dropout" in str(e.value) and "lora.target_modules" in str(e.value)
    from aft_hf.config import LoraConfig

    with pytest.raises(ConfigError) as e:  # a negative rank does not hide the adapter's other problems
        load_config(None, ["--lora.r", "-2", "--lora.dropout", "1.5", "--lora.alpha", "0"])
    assert all(name in str(e.value) for name in ("lora.r", "lora.dropout", "lora.alpha"))
    with pytest.raises(ConfigError, match=r"lora.alpha, lora.save_adapter: read only with LoRA on, and lora.r is 0"):
        load_config(None, ["--lora.save_adapter", "--lora.alpha", "32"])  # was a silent full fine-tuning
    assert load_config(None, ["--lora.r", "4", "--lora.save_adapter"]).lora.save_adapter
    encoder = load_image_encoder(str(tiny_clip_path))
    with pytest.raises(LoraError, match="query"):
        apply_lora(encoder.vision, LoraConfig(r=2, target_modules=["query"]))


@pytest.mark.slow
def test_lora_benchmark_smoke(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "lora_vs_full.py"
    out = tmp_path / "lora.json"
    subprocess.run([sys.executable, str(script), "--model", "tiny", "--steps", "1", "--rounds", "1", "--threads", "1",
                    "--json", str(out)], check=True, capture_output=True, text=True)
    results = json.loads(out.read_text())["results"]
    assert results["lora"]["trainable"] < results["full"]["trainable"] == results["full"]["total"]


@pytest.mark.slow
def test_lora_doc_command_runs(tmp_path, monkeypatch, single_thread):
    """docs/lora.md's command, 2 steps instead of the recipe's 200."""
    import re
    import shlex
    from pathlib import Path

    from aft_hf.cli import main

    doc = (Path(__file__).resolve().parents[1] / "docs" / "lora.md").read_text()
    block = doc.split("<!-- tested-by: tests/test_lora.py::test_lora_doc_command_runs -->", 1)[1]
    argv = shlex.split(re.search(r"```bash\n(.*?)```", block, re.S).group(1))
    monkeypatch.chdir(tmp_path)
    assert argv[:2] == ["aft-hf", "train"]
    assert main(argv[1:] + ["--max_steps", "2", "--warmup_steps", "1"]) == 0
    assert (tmp_path / "out" / "lora" / "final" / "adapter" / "adapter_config.json").is_file()
