"""aft-hf benchmark on tiny local copies of the clip_benchmark webdataset layout (written here)."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aft_hf.benchmark import BenchmarkError, DatasetRequest, Protocol, open_wds, run_benchmark
from aft_hf.benchmark import protocol as protocol_mod
from aft_hf.benchmark.suites import SUITES, suite_datasets
from aft_hf.cli import main
from aft_hf.evaluate import apgd as apgd_mod

REPO = Path(__file__).resolve().parents[2]
CHEAP = dict(iterations=3, ce_restarts=1, t_restarts=1, targets=2, batch_size=4)


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _image_bytes(rng: np.random.Generator, fmt: str) -> bytes:
    img = Image.fromarray((rng.random((20 + int(rng.integers(0, 12)), 24, 3)) * 255).astype("uint8"))
    buf = io.BytesIO()
    img.save(buf, format={"jpg": "jpeg"}.get(fmt, fmt), **({"lossless": True} if fmt == "webp" else {}))
    return buf.getvalue()


def write_wds(root: Path, classnames, shard_types, per_shard: int = 5, seed: int = 0, split: str = "test",
              templates=("a photo of a {c}.", "a blurry photo of the {c}.")) -> Path:
    """A clip_benchmark webdataset copy: classnames, templates, {split}/nshards.txt, {split}/{i}.tar."""
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    (root / split / "nshards.txt").write_text(f"{len(shard_types)}\n")
    index = 0
    for s, fmt in enumerate(shard_types):
        with tarfile.open(root / split / f"{s}.tar", "w") as tf:
            for _ in range(per_shard):
                key = f"s{index:07d}"
                _add(tf, f"{key}.{fmt}", _image_bytes(rng, fmt))
                _add(tf, f"{key}.cls", str(int(rng.integers(0, len(classnames)))).encode())
                index += 1
    return root


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    three = write_wds(root / "wds_three", ["cat", "dog", "bird"], ["png", "webp", "png"], seed=1)
    binary = write_wds(root / "wds_binary", ["lymph node", "tumour"], ["webp", "jpg"], per_shard=4, seed=2)
    return three, binary


@pytest.fixture(scope="module")
def world_copies(tmp_path_factory):
    """The same copies with class names both builtin models' tokenizers know (the world CLIP's knows its world's words
    only: other names would all read as one unknown token, which evaluation refuses)."""
    root = tmp_path_factory.mktemp("wds_world")
    three = write_wds(root / "wds_three", ["red circle", "blue square", "green cross"], ["png", "webp", "png"], seed=1)
    binary = write_wds(root / "wds_binary", ["yellow triangle", "red square"], ["webp", "jpg"], per_shard=4, seed=2)
    return three, binary


def _direct_accuracy(model_path, folder) -> float:
    """Clean zero-shot top-1 by hand: every tar member decoded here, classifier built from the files."""
    from aft_hf.data.images import preprocess
    from aft_hf.explain.targets import load_text_tower
    from aft_hf.model import load_image_encoder

    enc = load_image_encoder(str(model_path)).eval()
    tower = load_text_tower(str(model_path))
    names = (folder / "classnames.txt").read_text().split("\n")[:-1]
    templates = [t.replace("{c}", "{}") for t in (folder / "zeroshot_classification_templates.txt").read_text().split("\n")[:-1]]
    weights = []
    for n in names:
        e = tower.encode([t.format(n) for t in templates])
        e = e / e.norm(dim=-1, keepdim=True)
        m = e.mean(0)
        weights.append(m / m.norm())
    weights = torch.stack(weights)
    images, labels = [], []
    n = int((folder / "test" / "nshards.txt").read_text())
    for s in range(n):
        with tarfile.open(folder / "test" / f"{s}.tar") as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf}
        for name in sorted(k for k in members if not k.endswith(".cls")):
            images.append(preprocess(members[name], enc.image_size))
            labels.append(int(members[name.split(".")[0] + ".cls"]))
    with torch.no_grad():
        emb = enc(torch.stack(images))
        logits = 100 * (emb / emb.norm(dim=-1, keepdim=True)) @ weights.T
    return int((logits.argmax(1) == torch.tensor(labels)).sum()) / len(labels)


def test_reads_every_image_across_image_types(copies):
    three, binary = copies
    ds = open_wds(str(three))
    assert len(ds) == 15 and ds.image_types == {"png": 10, "webp": 5}
    assert ds.templates == ["a photo of a {}.", "a blurry photo of the {}."]
    assert ds.images(0, 15, 16).shape == (15, 3, 16, 16)  # webp shard included, in shard order
    assert list(ds.table["__key__"]) == [f"s{i:07d}" for i in range(15)]
    assert open_wds(str(binary)).image_types == {"webp": 4, "jpg": 4}


def test_incomplete_copies_fail_loudly(tmp_path):
    bad = write_wds(tmp_path / "missing", ["a", "b", "c"], ["png", "png"])
    with tarfile.open(bad / "test" / "1.tar", "a") as tf:  # a label whose image is gone
        _add(tf, "s0000099.cls", b"1")
    with pytest.raises(BenchmarkError, match="label but no image"):
        open_wds(str(bad))
    mixed = write_wds(tmp_path / "mixed", ["a", "b", "c"], ["png"])
    with tarfile.open(mixed / "test" / "0.tar", "a") as tf:
        _add(tf, "s0000050.webp", _image_bytes(np.random.default_rng(0), "webp"))
        _add(tf, "s0000050.cls", b"0")
    with pytest.raises(BenchmarkError, match="mixes image types"):
        open_wds(str(mixed))
    short = write_wds(tmp_path / "short", ["a", "b", "c"], ["png", "png"])
    (short / "test" / "nshards.txt").write_text("3\n")
    with pytest.raises(BenchmarkError, match="shard test/2.tar is missing"):
        open_wds(str(short))
    broken = write_wds(tmp_path / "broken", ["a", "b"], ["png"])
    with tarfile.open(broken / "test" / "0.tar", "a") as tf:
        _add(tf, "s0000077.png", b"not an image")
        _add(tf, "s0000077.cls", b"1")
    ds = open_wds(str(broken))
    assert len(ds) == 6
    with pytest.raises(BenchmarkError, match="image of sample 's0000077' of test/0.tar cannot be decoded"):
        ds.images(0, 6, 16)
    labels = write_wds(tmp_path / "labels", ["a", "b", "c"], ["png", "png"])
    with tarfile.open(labels / "test" / "1.tar", "a") as tf:  # one label past the class list, in the second shard
        _add(tf, "s0000042.png", _image_bytes(np.random.default_rng(1), "png"))
        _add(tf, "s0000042.cls", b"7")
    with pytest.raises(BenchmarkError, match=r"1 labels outside 0..2 \(3 class names\), e.g. 7 \(sample 's0000042' of "
                                             r"test/1.tar\)"):
        open_wds(str(labels))


def test_suite_registry_carries_the_reference_ids():
    ids = [d.hub_id for d in SUITES["robustvlm13"]]
    assert len(ids) == 13 and len(set(ids)) == 13
    assert {"clip-benchmark/wds_vtab-cifar10", "clip-benchmark/wds_vtab-pcam", "clip-benchmark/wds_cars",
            "clip-benchmark/wds_fgvc_aircraft", "clip-benchmark/wds_imagenet_sketch"} <= set(ids)
    both = suite_datasets(["robustvlm13", "imagenet1k"])
    assert both[-1].robust_images == 5000 and not both[-1].in_average
    assert DatasetRequest.from_ref("clip-benchmark/wds_imagenet1k").protocol_robust_images == 5000
    with pytest.raises(BenchmarkError, match="unknown suite"):
        suite_datasets(["nope"])


def test_protocol_settings_and_deviations():
    p = Protocol()
    assert p.deviations() == [] and p.eps == (2.0, 4.0)
    assert p.targets_for(2) == 0 and p.targets_for(3) == 2 and p.targets_for(100) == 9
    assert p.steps_per_image(100) == 100 * (5 + 9) and p.steps_per_image(2) == 500
    assert "iterations 3 (protocol 100)" in Protocol(iterations=3).deviations()
    # targets depend on the dataset: 20 asked are the protocol's 9 on 10 classes; pcam (2 classes) has none
    assert Protocol(targets=20).deviations() == [] and Protocol(targets=20).target_deviation(10) is None
    assert Protocol(targets=0).target_deviation(2) is None
    assert Protocol(targets=20).target_deviation(100) == "20 APGD-T target classes (protocol 9)"
    assert Protocol(targets=2).target_deviation(10) == "2 APGD-T target classes (protocol 9)"
    with pytest.raises(BenchmarkError, match="--iterations must be >= 1"):
        Protocol(iterations=0)
    with pytest.raises(BenchmarkError, match=r"--eps: eps is in 1/255 units: 0.0156863 means .*did you mean 4 "):
        Protocol(eps=(4 / 255,))  # a budget already divided by 255 attacks nothing: robust = clean accuracy


def _strip(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("created", "launch")}


@pytest.mark.slow
def test_benchmark_end_to_end(copies, tiny_clip_path, tmp_path, monkeypatch, single_thread, caplog):
    three, binary = copies
    runs = []
    real = apgd_mod.apgd

    def spy(forward, images, labels, eps, norm, iterations, loss, target, **kw):
        runs.append((loss.__name__, len(images)))
        return real(forward, images, labels, eps, norm, iterations, loss, target, **kw)

    monkeypatch.setattr(apgd_mod, "apgd", spy)  # what the protocol's apgd_robust calls
    requests = [DatasetRequest.from_ref(str(three)), DatasetRequest.from_ref(str(binary))]
    protocol = Protocol(eps=(2, 8), robust_images=6, **CHEAP)
    printed = []
    with caplog.at_level("INFO", logger="aft_hf.benchmark"):
        report = run_benchmark([str(tiny_clip_path)], requests, tmp_path / "out", protocol, print_fn=printed.append)
    assert "three: first batch took" in caplog.text and "remaining batches: about" in caplog.text  # the ETA
    assert caplog.text.count("the rest of the run") == 1  # once, after the run's first batch
    res = report["results"][str(tiny_clip_path)]
    # clean accuracy over the whole split equals a direct computation from the tars
    assert res["three"]["clean_top1"] == pytest.approx(_direct_accuracy(tiny_clip_path, three), abs=1e-9)
    assert res["binary"]["clean_top1"] == pytest.approx(_direct_accuracy(tiny_clip_path, binary), abs=1e-9)
    assert res["three"]["clean_images"] == 15 and res["three"]["robust_images"] == 6
    # the binary dataset: APGD-CE only (the spy saw no targeted run for it), recorded
    assert res["binary"]["targets"] == 0 and res["binary"]["attacks"] == ["APGD-CE"]
    assert res["three"]["targets"] == 2 and res["three"]["attacks"] == ["APGD-CE", "APGD-T"]
    assert any(name == "targeted_dlr_loss" for name, _ in runs)
    # robust never above clean on the attacked images
    for r in res.values():
        assert all(v <= r["clean_top1_attacked_images"] + 1e-9 for v in r["robust_top1"].values())
    # cost printed first; outputs written; every setting recorded; not the protocol: said so
    assert "worst-case steps" in printed[0] and any(line.startswith("three") for line in printed)
    assert printed[-1].endswith("precision fp32")  # the precision is named before the run, not only in the report
    out = tmp_path / "out"
    for name in ("report.json", "report.md", "benchmark.png"):
        assert (out / name).is_file()
    saved = json.loads((out / "report.json").read_text())
    assert saved["protocol"]["iterations"] == 3 and saved["is_protocol"] is False and saved["complete"]
    assert any("iterations 3" in d for d in saved["deviations"])
    assert any("6 images attacked (protocol 1000)" in d for d in saved["deviations"])
    md = (out / "report.md").read_text()
    assert "Not the protocol's numbers" in md and "| three |" in md and "average (2 datasets)" in md
    avg = saved["average"][str(tiny_clip_path)]["clean_top1"]
    assert avg == pytest.approx((res["three"]["clean_top1"] + res["binary"]["clean_top1"]) / 2)


def test_binary_dataset_runs_no_targeted_attack(monkeypatch):
    seen = []

    def fake_apgd(forward, images, labels, eps, norm, iterations, loss, target, generator=None, groups=None,
                  speed=None):
        seen.append((loss.__name__, len(images)))
        return images, torch.zeros(len(images), dtype=torch.bool)  # never fooled: every run happens

    monkeypatch.setattr(apgd_mod, "apgd", fake_apgd)  # what the protocol's apgd_robust calls
    def clf(classes):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, classes))

    x, alive = torch.rand(3, 3, 4, 4), torch.ones(3, dtype=torch.bool)

    def runs(classes, protocol):
        """APGD-CE runs, and (image, target) rows of APGD-T (the targets go side by side, in chunks)."""
        seen.clear()
        model = clf(classes)
        with torch.no_grad():
            y = model(x).argmax(1)  # every image correct: every one is attacked
        protocol_mod.robust_verdicts(model, x, y, alive, 4, protocol, seed=0)
        return (sum(name == "ce_loss" for name, _ in seen),
                sum(rows for name, rows in seen if name == "targeted_dlr_loss"))

    assert runs(2, Protocol(**CHEAP)) == (1, 0)  # ce_restarts=1, and no targeted run with 2 classes
    assert runs(3, Protocol(**CHEAP)) == (1, 3 * 2)
    assert runs(10, Protocol(iterations=1)) == (5, 3 * 9)  # AutoAttack 'custom'


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_report(copies, tiny_clip_path, tmp_path, monkeypatch, single_thread):
    three, binary = copies
    requests = [DatasetRequest.from_ref(str(three)), DatasetRequest.from_ref(str(binary))]
    protocol = Protocol(eps=(4,), robust_images=6, **CHEAP)
    full = run_benchmark([str(tiny_clip_path)], requests, tmp_path / "full", protocol, print_fn=lambda s: None)

    from aft_hf.benchmark import runner
    real, calls = runner.BatchWork.compute, []

    def dies_on_the_sixth_batch(self, b):
        calls.append(b)
        if len(calls) == 6:  # the first dataset (4 batches) is done, the second half-way
            raise KeyboardInterrupt
        return real(self, b)

    monkeypatch.setattr(runner.BatchWork, "compute", dies_on_the_sixth_batch)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark([str(tiny_clip_path)], requests, tmp_path / "cut", protocol, print_fn=lambda s: None)
    partial = json.loads((tmp_path / "cut" / "report.json").read_text())
    assert not partial["complete"] and "three" in partial["results"][str(tiny_clip_path)]
    monkeypatch.setattr(runner.BatchWork, "compute", lambda self, b: calls.append(b) or real(self, b))
    resumed = run_benchmark([str(tiny_clip_path)], requests, tmp_path / "cut", protocol, print_fn=lambda s: None)
    assert calls[6:] == [1]  # only the batch in flight was redone (batch 0 of binary was saved)
    assert _strip(resumed) == _strip(full)
    with pytest.raises(BenchmarkError, match="other settings") as refused:
        run_benchmark([str(tiny_clip_path)], requests, tmp_path / "cut", Protocol(eps=(2,), robust_images=6, **CHEAP),
                      print_fn=lambda s: None)
    assert "protocol.eps: [4.0] -> [2.0]" in str(refused.value)  # which value, old and new


def test_a_run_that_computed_nothing_does_not_bind_its_folder(copies, tiny_clip_path, tmp_path, single_thread):
    """A first try that stops before any batch (a model folder without weights) leaves settings behind; the
    corrected command is not refused as "another run" but replaces them. Once a batch is saved, other settings
    are refused, each difference named down to the dataset record that differs."""
    import shutil

    from aft_hf.benchmark.runner import _differences

    three, _ = copies
    (tmp_path / "typo").mkdir()
    shutil.copy(tiny_clip_path / "config.json", tmp_path / "typo")  # a config: it passes the up-front check
    requests = [DatasetRequest.from_ref(str(three))]
    protocol = Protocol(eps=(4,), robust_images=4, **CHEAP)
    with pytest.raises(Exception, match="typo"):
        run_benchmark([str(tmp_path / "typo")], requests, tmp_path / "b", protocol, print_fn=lambda s: None)
    assert (tmp_path / "b" / "state" / "settings.json").is_file()
    report = run_benchmark([str(tiny_clip_path)], requests, tmp_path / "b", protocol, print_fn=lambda s: None)
    assert report["complete"]
    assert _differences({"datasets": [{"name": "c", "ref": "x/a"}]}, {"datasets": [{"name": "c", "ref": "x/b"}]}) == [
        'datasets[c].ref: "x/a" -> "x/b"']
    two = {"datasets": [{"name": "c", "ref": "x/a"}, {"name": "p", "ref": "x/p"}]}
    assert _differences(two, {"datasets": two["datasets"][:1]}) == ["datasets[p]: not given now"]  # not cut at 60 chars
    assert _differences({"datasets": two["datasets"][:1]}, two) == ["datasets[p]: added"]


@pytest.mark.slow
def test_card_entries_per_dataset(copies, tiny_clip_path, tmp_path, single_thread):
    """With --data-root, a local copy keeps its Hub id, so push puts model-index entries per dataset."""
    import shutil

    from aft_hf.card import build_model_card

    three, binary = copies
    root = tmp_path / "mirror"
    shutil.copytree(three, root / "wds_vtab-cifar10")
    shutil.copytree(binary, root / "wds_vtab-pcam")
    code = main(["benchmark", "--model", str(tiny_clip_path), "--datasets", "clip-benchmark/wds_vtab-cifar10",
                 "clip-benchmark/wds_vtab-pcam", "--data-root", str(root), "--eps", "4", "--iterations", "2",
                 "--ce-restarts", "1", "--targets", "2", "--robust-images", "4", "--batch-size", "8",
                 "--device", "cpu", "--out", str(tmp_path / "b")])
    assert code == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    # a 3-class, 15-image folder under the cifar10 name is no copy of it: said, and never published as the protocol's
    cifar10 = next(d for d in report["datasets"] if d["name"] == "cifar10")
    assert "3 classes where clip-benchmark/wds_vtab-cifar10 has 10: not a copy of it" in cifar10["deviations"]
    assert any(x.startswith("15 test images, fewer than the 1000") for x in cifar10["deviations"])
    assert not report["is_protocol"]
    card_file = tmp_path / "b" / report["card_reports"][str(tiny_clip_path)]
    card = build_model_card(tiny_clip_path, "me/model", report=json.loads(card_file.read_text()))
    text = str(card)
    assert "Measured with `aft-hf benchmark`" in text and "No evaluation is reported" not in text
    assert text.count("## Evaluation") == 1 and "### clip-benchmark/wds_vtab-pcam" in text
    results = card.data.eval_results
    pcam = [r for r in results if r.dataset_name == "clip-benchmark/wds_vtab-pcam"]
    assert {r.metric_type for r in pcam} == {"accuracy", "robust_accuracy"}
    assert all("(APGD-CE, L-inf), eps 4/255" in r.metric_name for r in pcam if r.metric_type != "accuracy")
    assert all(r.metric_name.endswith("(not the protocol's)") for r in pcam)  # the clean numbers too (8 images)
    assert all(r.metric_name.count("not the protocol's") == 1 for r in pcam)  # said once, not twice
    from aft_hf.hub import prepare_hub_folder  # what `aft-hf push --report card_<model>.json` builds

    hub = prepare_hub_folder(tiny_clip_path, tmp_path / "hub", "me/model", card_file)
    from aft_hf.hub import HubError
    from aft_hf.model import save_tiny_clip

    other = save_tiny_clip(tmp_path / "other", seed=4)  # a card of other weights: the fix is a benchmark of this one
    with pytest.raises(HubError, match=f"benchmark this folder \\(`aft-hf benchmark --model {other.resolve()} ...`\\)"):
        prepare_hub_folder(other, tmp_path / "hub_other", "me/other", card_file)
    readme = (hub / "README.md").read_text()
    assert "### clip-benchmark/wds_vtab-pcam" in readme and (hub / "assets" / "benchmark.png").is_file()
    assert "![Benchmark (aft-hf benchmark)](assets/benchmark.png)" in readme  # the tool that measured it
    assert any(r.metric_type == "robust_accuracy" and r.metric_value == report["results"][str(tiny_clip_path)]
               ["pcam"]["robust_top1"]["4/255"] for r in pcam)
    # the 3-class stand-in for cifar10 is published under no Hub dataset's name: its numbers are the folder's
    assert cifar10["copy_of_hub_dataset"] is False
    assert report["launch"]["image_sizes"] == {str(tiny_clip_path): 32}
    assert not [r for r in results if r.dataset_name == "clip-benchmark/wds_vtab-cifar10"]
    assert "### clip-benchmark/wds_vtab-cifar10" not in readme and "wds_vtab-cifar10" in readme


@pytest.mark.slow
def test_two_processes_equal_one(copies, tiny_clip_path, tmp_path, single_thread):
    three, binary = copies
    common = ["benchmark", "--model", str(tiny_clip_path), "--datasets", str(three), str(binary), "--eps", "4",
              "--iterations", "3", "--ce-restarts", "1", "--targets", "2", "--robust-images", "6",
              "--batch-size", "4", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    assert main([*common, "--out", str(tmp_path / "one")]) == 0  # one process: this one
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", "0", "-m", "aft_hf"]
    two = subprocess.run(launcher + common + ["--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "report.json").read_text())
    b = json.loads((tmp_path / "two" / "report.json").read_text())
    assert a["launch"]["num_processes"] == 1 and b["launch"]["num_processes"] == 2
    assert _strip(a) == _strip(b)
    # the per-image verdicts too, batch by batch
    for f in (tmp_path / "one" / "state").rglob("batch_*.json"):
        assert json.loads(f.read_text()) == json.loads((tmp_path / "two" / f.relative_to(tmp_path / "one")).read_text())


def _tested_commands(doc: Path) -> list[str]:
    """The commands of the bash blocks that follow a ``<!-- tested-by: ... -->`` marker in the doc."""
    import re

    blocks = re.findall(r"<!-- tested-by: [^>]*-->\s*```bash\n(.*?)```", doc.read_text(), flags=re.S)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.slow
def test_docs_examples_run(world_copies, tmp_path, monkeypatch, single_thread):
    """docs/benchmark.md: the commands marked as tested run offline on tiny copies; the others need the Hub/GPU."""
    import shlex
    import shutil

    three, binary = world_copies
    shutil.copytree(three, tmp_path / "mirror" / "wds_vtab-cifar10")
    shutil.copytree(binary, tmp_path / "mirror" / "wds_vtab-pcam")
    monkeypatch.chdir(tmp_path)
    commands = _tested_commands(REPO / "docs" / "benchmark.md")
    assert len(commands) == 3
    stamps = None
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "aft-hf"
        assert main(argv[1:]) == 0, command
        saved = {p: p.stat().st_mtime_ns for p in (tmp_path / "bench_small" / "state" / "tiny-clip").rglob("*")}
        assert saved and (stamps is None or saved == stamps)  # the second and third runs: nothing of tiny-clip recomputed
        stamps = saved
    report = json.loads((tmp_path / "bench_small" / "report.json").read_text())
    assert report["complete"] and [d["hub_id"] for d in report["datasets"]] == [
        "clip-benchmark/wds_vtab-cifar10", "clip-benchmark/wds_vtab-pcam"]
    assert report["models"] == ["builtin:tiny-clip", "builtin:world-clip"] and all(
        set(report["results"][m]) == {"cifar10", "pcam"} for m in report["models"])
    assert not list((tmp_path / "bench_small" / "state").rglob("*.tmp"))


@pytest.mark.slow
def test_hub_dataset_offline_is_one_line(tiny_clip_path, tmp_path, capsys, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["benchmark", "--model", str(tiny_clip_path), "--datasets", "clip-benchmark/wds_vtab-pets",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert ("dataset 'clip-benchmark/wds_vtab-pets': no local copy (give one with --data-root DIR, as DIR/<repo name>), "
            "and HF_HUB_OFFLINE is set (not in the Hub cache either)") in err
    # a --data-root without the copy: the message names the copy it looked for; a --data-root that is no folder
    (tmp_path / "mirror").mkdir()
    code = main(["benchmark", "--model", str(tiny_clip_path), "--datasets", "clip-benchmark/wds_vtab-pets",
                 "--data-root", str(tmp_path / "mirror"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"no copy at '{tmp_path / 'mirror' / 'wds_vtab-pets'}', and HF_HUB_OFFLINE is set" in err
    suite = ["benchmark", "--model", str(tiny_clip_path), "--suite", "robustvlm13", "--data-root", str(tmp_path / "mirror"),
             "--out", str(tmp_path / "o")]
    caplog.clear()
    code = main(suite)
    err = capsys.readouterr().err.strip()  # a partial mirror: every gap in one short line, not a paragraph per dataset
    assert code == 2 and len(err.splitlines()) == 1 and len(err) < 800, err
    assert f"13 of 13 datasets cannot be opened: no local copy under --data-root '{tmp_path / 'mirror'}' of " in err
    assert "clip-benchmark/wds_vtab-pets" in err and err.count("HF_HUB_OFFLINE") == 1
    assert "reading it from the Hub" not in caplog.text  # offline: no promise of a download
    code = main(["benchmark", "--model", str(tiny_clip_path), "--datasets", "clip-benchmark/wds_vtab-pets",
                 "--data-root", str(tmp_path / "mirrr"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"--data-root '{tmp_path / 'mirrr'}' is not a folder" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_nested_budgets_attack_only_the_survivors(copies, tiny_clip_path, tmp_path, monkeypatch, single_thread):
    _, binary = copies
    attacked = {}
    real = apgd_mod.apgd

    def spy(forward, images, labels, eps, *args, **kw):
        attacked.setdefault(round(eps * 255), []).append(len(images))
        return real(forward, images, labels, eps, *args, **kw)

    monkeypatch.setattr(apgd_mod, "apgd", spy)  # what the protocol's apgd_robust calls
    protocol = Protocol(eps=(1, 8), robust_images=8, nested=True, **{**CHEAP, "batch_size": 8})
    report = run_benchmark([str(tiny_clip_path)], [DatasetRequest.from_ref(str(binary))], tmp_path / "n", protocol,
                           print_fn=lambda s: None)
    record = json.loads(next((tmp_path / "n" / "state").rglob("batch_000000.json")).read_text())
    survivors = sum(record["robust"]["1/255"])
    assert attacked.get(8, []) == ([survivors] if survivors else [])  # only the images robust at 1/255
    assert all(a >= b for a, b in zip(record["robust"]["1/255"], record["robust"]["8/255"]))
    assert any("nested budgets" in d for d in report["deviations"])


def test_bf16_is_recorded_and_returns_float32_logits():
    assert "precision bf16 (protocol fp32)" in Protocol(precision="bf16").deviations()
    forward = protocol_mod.PrecisionForward(torch.nn.Linear(4, 3), "bf16")
    assert forward(torch.rand(2, 4)).dtype == torch.float32
    with pytest.raises(BenchmarkError, match="precision"):
        Protocol(precision="fp16")


@pytest.mark.parametrize("env, flags, precision", [
    (None, [], "fp32"), ("bf16", [], "bf16"), ("BF16", [], "bf16"), ("no", [], "fp32"),
    (None, ["--bf16"], "bf16"), (None, ["--mixed-precision", "bf16"], "bf16"),
    ("bf16", ["--mixed-precision", "no"], "fp32"), ("fp16", ["--mixed-precision", "no"], "fp32"),
])
def test_precision_follows_the_flags_then_the_launcher(tmp_path, monkeypatch, env, flags, precision):
    """`accelerate launch --mixed_precision bf16 -m aft_hf benchmark ...` runs the benchmark in bf16, as it does
    `aft-hf evaluate`; an explicit flag wins over the launcher."""
    import aft_hf.benchmark.run as run_mod

    seen = {}
    monkeypatch.setattr(run_mod, "run_benchmark", lambda models, requests, out, protocol, *a, **k: seen.update(
        precision=protocol.precision))
    if env is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env)
    assert main(["benchmark", "--model", "m", "--datasets", "d", "--out", str(tmp_path / "o"), *flags]) == 0
    assert seen == {"precision": precision}


@pytest.mark.parametrize("env, flags, message", [
    ("fp16", [], "ACCELERATE_MIXED_PRECISION='fp16' (accelerate launch --mixed_precision?): the benchmark runs in "
                 "no or bf16"),
    (None, ["--bf16", "--mixed-precision", "no"], "--bf16 and --mixed-precision no contradict each other"),
])
def test_precision_the_benchmark_cannot_honour_is_one_line(tmp_path, monkeypatch, capsys, env, flags, message):
    import aft_hf.benchmark.run as run_mod

    monkeypatch.setattr(run_mod, "run_benchmark", lambda *a, **k: pytest.fail("the run started"))
    if env is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env)
    assert main(["benchmark", "--model", "m", "--datasets", "d", "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_markdown_has_a_row_per_dataset_the_average_and_the_difference_between_models():
    from aft_hf.benchmark.report import build_report, markdown

    protocol = Protocol()
    datasets = [{"name": n, "in_average": n != "imagenet1k", "hub_id": f"clip-benchmark/wds_{n}", "local_dir": None,
                 "split": "test", "clean_images": 10, "robust_images": 10, "classes": 10, "templates": 1,
                 "image_types": {"webp": 10}, "deviations": []} for n in ("cifar10", "pets", "imagenet1k")]

    def result(clean, r2, r4):
        return {"clean_top1": clean, "clean_top5": None, "robust_top1": {"2/255": r2, "4/255": r4},
                "targets": 9, "robust_images": 10, "clean_images": 10}

    results = {"base": {"cifar10": result(0.9, 0.1, 0.0), "pets": result(0.8, 0.3, 0.1), "imagenet1k": result(0.7, 0, 0)},
               "fare": {"cifar10": result(0.8, 0.5, 0.3), "pets": result(0.7, 0.4, 0.2), "imagenet1k": result(0.6, .2, .1)}}
    report = build_report(["base", "fare"], None, protocol, datasets, results, {"num_processes": 1, "device": "cpu"})
    assert report["is_protocol"] and report["complete"]
    assert report["average"]["fare"]["clean_top1"] == pytest.approx(0.75)  # ImageNet not in the average
    md = markdown(report)
    assert "| cifar10 | 90.0 | 10.0 | 0.0 | 80.0 | 50.0 | 30.0 | -10.0 | +40.0 | +30.0 |" in md
    assert "| **average (2 datasets)** | 85.0 | 20.0 | 5.0 | 75.0 | 45.0 | 25.0 | -10.0 | +25.0 | +20.0 |" in md
    assert "imagenet1k (not in average)" in md and "`fare` - `base` clean" in md
    assert "follow the protocol" in md
    from aft_hf.benchmark.report import card_report

    subs = card_report(report, "fare")["reports"]
    assert [r["dataset"] for r in subs] == ["clip-benchmark/wds_cifar10", "clip-benchmark/wds_pets",
                                            "clip-benchmark/wds_imagenet1k"]
    attack = subs[0]["metrics"]["robust_attack"]
    assert attack["name"] == "APGD-CE+APGD-T, L-inf" and attack["protocol"] == "clip_benchmark/RobustVLM"
    assert "zeroshot_top5" not in subs[0]["metrics"]  # no number, no entry


@pytest.mark.parametrize("targets", [0, 3])
def test_protocol_attack_is_the_packages_apgd_ce_then_apgd_t(targets):
    """With one restart of each, the benchmark's verdicts are apgd_robust's image for image: the protocol passes
    its iterations, targets and seed through (apgd_robust is the one cross-checked against AutoAttack in
    test_apgd.py)."""
    from aft_hf.evaluate.apgd import apgd_robust

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 5))
    x, y = torch.rand(24, 3, 6, 6), torch.randint(0, 5, (24,))
    with torch.no_grad():
        alive = model(x).argmax(1) == y
    protocol = Protocol(iterations=5, ce_restarts=1, t_restarts=1, targets=targets)
    for eps in (2, 16):
        ours = protocol_mod.robust_verdicts(model, x, y, alive, eps, protocol, seed=7)
        ref = apgd_robust(model, x, y, eps / 255, "linf", 5, restarts=1, targets=targets, seed=7)
        assert torch.equal(ours, ref)
    assert 0 < int(ours.sum()) < int(alive.sum())  # the attack did something, and not everything


@pytest.mark.slow
def test_compiled_encoder_runs_compiled_is_recorded_and_resumes_either_way(copies, tiny_clip_path, tmp_path,
                                                                             single_thread):
    """``aft-hf benchmark --compile``: the encoder runs compiled (dynamo captures its graphs; that batches of other
    sizes reuse them is the compiled attack's test in tests/evaluate/test_apgd.py), the report says so under
    ``launch`` and in report.md, and since compiling is speed only a run started compiled resumes uncompiled (the
    protocol, hence the settings check, is the same)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    three, _ = copies
    torch._dynamo.reset()
    counters.clear()
    out = tmp_path / "c"
    rc = main(["benchmark", "--model", str(tiny_clip_path), "--datasets", str(three), "--eps", "2", "--iterations",
               "2", "--ce-restarts", "1", "--targets", "1", "--robust-images", "6", "--batch-size", "4", "--compile",
               "--out", str(out)])
    assert rc == 0
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo compiled the encoder (0 if --compile were ignored)
    report = json.loads((out / "report.json").read_text())
    assert report["launch"]["compiled_encoder"] is True and report["complete"]
    assert "image encoder compiled" in (out / "report.md").read_text()
    r = report["results"][str(tiny_clip_path)]["three"]
    assert all(0 <= v <= r["clean_top1_attacked_images"] + 1e-9 for v in r["robust_top1"].values())
    torch._dynamo.reset()
    rc = main(["benchmark", "--model", str(tiny_clip_path), "--datasets", str(three), "--eps", "2", "--iterations",
               "2", "--ce-restarts", "1", "--targets", "1", "--robust-images", "6", "--batch-size", "4",
               "--out", str(out)])  # the same run, resumed without --compile: accepted (all done already)
    assert rc == 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_run_in_one_line_and_the_same_command_resumes(copies, tiny_clip_path, tmp_path, capsys,
                                                                          caplog, monkeypatch, single_thread, signum):
    """A scheduler's SIGTERM or a Ctrl-C mid-run: exit 128 + signal with one line saying how to resume (no traceback,
    no silent 143); the same command then finishes without redoing the saved batches."""
    import signal

    from aft_hf.benchmark import runner

    three, _ = copies
    args = ["benchmark", "--model", str(tiny_clip_path), "--datasets", str(three), "--eps", "4", "--iterations", "2",
            "--ce-restarts", "1", "--targets", "2", "--robust-images", "4", "--batch-size", "4", "--device", "cpu",
            "--out", str(tmp_path / "b")]
    real, calls, sent = runner.BatchWork.compute, [], []

    def signalled_on_the_second_batch(self, b):
        calls.append(b)
        if len(calls) == 2 and not sent:
            sent.append(True)
            os.kill(os.getpid(), getattr(signal, signum))
        return real(self, b)

    monkeypatch.setattr(runner.BatchWork, "compute", signalled_on_the_second_batch)
    caplog.set_level("INFO", logger="aft_hf")
    code = main(args)
    err = capsys.readouterr().err.strip()
    import re

    def passes_left() -> int:  # the whole run's estimate, logged after the first computed batch
        return int(re.search(r"\(([\d,]+) passes at most", caplog.text).group(1).replace(",", ""))

    fresh = passes_left()
    caplog.clear()
    assert code == 128 + getattr(signal, signum) and "Traceback" not in err  # (stderr also holds progress bars)
    assert err.splitlines()[-1] == (f"aft-hf benchmark: error: stopped by {signum}: every finished batch is saved in "
                                    f"'{tmp_path / 'b'}'; run the same command to resume")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is given back
    calls.clear()
    assert main(args) == 0 and json.loads((tmp_path / "b" / "report.json").read_text())["complete"]
    assert calls and calls[0] == 1  # resumed at the batch in flight: batch 0 was saved
    assert "resuming: 1 of 4 batches already saved" in caplog.text  # and it says so
    assert passes_left() == round(fresh * 3 / 4)  # and its estimate leaves out the saved batch
    caplog.clear()
    assert main(args) == 0 and "already done" in caplog.text


@pytest.mark.slow
def test_two_models_whose_names_slug_alike_keep_their_own_results(copies, tmp_path, single_thread, capsys):
    """`org/model` and `org__model` (or `builtin:tiny-clip` and `./tiny-clip`) used to share one state folder and
    card: the second model was reported with the first one's numbers and weights."""
    from aft_hf.files import WEIGHTS_HASH_KEY
    from aft_hf.model import save_tiny_clip

    three, _ = copies
    a = save_tiny_clip(tmp_path / "org" / "model", seed=0)
    b = save_tiny_clip(tmp_path / "org__model", seed=3)
    common = ["benchmark", "--datasets", str(three), "--eps", "4", "--iterations", "2", "--ce-restarts", "1",
              "--targets", "1", "--robust-images", "4", "--batch-size", "8", "--device", "cpu"]
    assert main([*common, "--model", str(a), "--model", str(b), "--out", str(tmp_path / "both")]) == 0
    both = json.loads((tmp_path / "both" / "report.json").read_text())
    (name,) = both["results"][str(a)]
    hashes = {m: both["results"][m][name][WEIGHTS_HASH_KEY] for m in (str(a), str(b))}
    assert len(set(hashes.values())) == 2
    assert len(set(both["card_reports"].values())) == 2  # a card each
    for m in (str(a), str(b)):  # each model's numbers are its own: the same as benchmarked alone
        alone = tmp_path / f"alone_{len(m)}"
        assert main([*common, "--model", m, "--out", str(alone)]) == 0
        mine = json.loads((alone / "report.json").read_text())["results"][m][name]
        assert mine[WEIGHTS_HASH_KEY] == hashes[m]
        assert mine["clean_top1"] == both["results"][m][name]["clean_top1"]
    assert main([*common, "--model", str(a), "--model", str(a) + "/", "--out", str(tmp_path / "twice")]) == 2
    assert "a model is given twice" in capsys.readouterr().err


def test_markdown_gives_the_clean_accuracy_of_the_attacked_images_when_they_are_a_subset():
    """Clean accuracy covers the split, robust accuracy its first images: on a small sample robust can exceed
    clean, so report.md gives the attacked images' own clean accuracy beside."""
    from aft_hf.benchmark.report import build_report, markdown

    datasets = [{"name": n, "in_average": True, "hub_id": f"clip-benchmark/wds_{n}", "local_dir": None,
                 "split": "test", "clean_images": 20, "robust_images": robust, "classes": 10, "templates": 1,
                 "image_types": {"png": 20}, "deviations": []} for n, robust in (("cifar10", 8), ("pets", 20))]

    def result(clean, attacked, robust):
        return {"clean_top1": clean, "clean_top5": None, "robust_top1": {"2/255": robust, "4/255": 0.0},
                "clean_top1_attacked_images": attacked, "targets": 9, "robust_images": 8, "clean_images": 20}

    results = {"base": {"cifar10": result(0.2, 0.375, 0.25), "pets": result(0.5, 0.5, 0.1)}}
    md = markdown(build_report(["base"], None, Protocol(), datasets, results, {"num_processes": 1, "device": "cpu"}))
    assert "| cifar10 | 8 | 37.5 |" in md  # beside clean 20.0 and robust 25.0
    assert "| pets | 20 |" not in md  # every image attacked: nothing to add
    whole = dict(datasets[0], robust_images=20)
    md = markdown(build_report(["base"], None, Protocol(), [whole], {"base": {"cifar10": results["base"]["cifar10"]}},
                               {"num_processes": 1, "device": "cpu"}))
    assert "clean on them" not in md


def test_a_model_that_is_none_is_refused_before_any_dataset_is_read(tmp_path, monkeypatch, capsys):
    import aft_hf.benchmark.run as benchmark_run

    def no_data(*args, **kwargs):
        raise AssertionError("the datasets were read before the models were checked")

    monkeypatch.setattr(benchmark_run, "_open_all", no_data)
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "notes.txt").write_text("no config.json here")
    code = main(["benchmark", "--model", str(tmp_path / "not_a_model"), "--datasets", "clip-benchmark/wds_vtab-cifar10",
                 "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "is not a model folder (no config.json)" in err and len(err.strip().splitlines()) == 1, err


def test_ctrl_c_stops_the_run_even_where_sigint_was_ignored_before():
    """Ctrl-C must not rely on Python's default SIGINT handler: a host (or an earlier test) may have replaced it."""
    import signal

    from aft_hf.benchmark.errors import BenchmarkStopped
    from aft_hf.commands.benchmark import _stop_on_signal

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(BenchmarkStopped):
            with _stop_on_signal("out"):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # the handler runs between bytecodes
                    pass
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # given back
    finally:
        signal.signal(signal.SIGINT, before)


def test_measured_weights_and_the_check(tmp_path):
    """What a state folder says it measured: nothing without saved work, its weights.json or result.json's hash
    otherwise; other image or text weights are refused in one line naming which, two hashes in one folder too."""
    from aft_hf.benchmark.weights import TEXT_HASH_KEY, WEIGHTS_FILE, check_same_weights, measured_weights
    from aft_hf.files import WEIGHTS_HASH_KEY

    a, b, t, u = "a" * 64, "b" * 64, "t" * 64, "u" * 64
    state = tmp_path / "state" / "m"
    (state / "three").mkdir(parents=True)
    (state / WEIGHTS_FILE).write_text(json.dumps({WEIGHTS_HASH_KEY: a, TEXT_HASH_KEY: t}))
    assert measured_weights(state) is None  # no batch saved yet: it binds nothing
    (state / "three" / "batch_000000.json").write_text("{}")
    assert measured_weights(state) == {WEIGHTS_HASH_KEY: a, TEXT_HASH_KEY: t}
    check_same_weights("m", "m", state, measured_weights(state), {WEIGHTS_HASH_KEY: a, TEXT_HASH_KEY: t})
    with pytest.raises(BenchmarkError, match=r"^m has changed since this folder measured it .* delete '") as e:
        check_same_weights("m", "m", state, measured_weights(state), {WEIGHTS_HASH_KEY: b, TEXT_HASH_KEY: t})
    assert "\n" not in str(e.value)
    with pytest.raises(BenchmarkError, match=r"^the text tower of m \(txt\) has changed since"):
        check_same_weights("m", "txt", state, measured_weights(state), {WEIGHTS_HASH_KEY: a, TEXT_HASH_KEY: u})
    (state / WEIGHTS_FILE).unlink()  # a folder from before weights.json: result.json names the image tower
    (state / "three" / "result.json").write_text(json.dumps({WEIGHTS_HASH_KEY: b}))
    assert measured_weights(state) == {WEIGHTS_HASH_KEY: b}
    check_same_weights("m", "m", state, measured_weights(state), {WEIGHTS_HASH_KEY: b, TEXT_HASH_KEY: u})
    (state / WEIGHTS_FILE).write_text(json.dumps({WEIGHTS_HASH_KEY: a}))
    with pytest.raises(BenchmarkError, match="2 different weights"):
        measured_weights(state)


def test_text_tower_hash_follows_weights_and_vocabulary(tiny_clip_path, tmp_path):
    from aft_hf.benchmark.weights import text_tower_sha256
    from aft_hf.explain.targets import load_text_tower
    from aft_hf.model import save_tiny_clip

    first = load_text_tower(str(tiny_clip_path))
    assert text_tower_sha256(first) == text_tower_sha256(load_text_tower(str(tiny_clip_path)))
    other = load_text_tower(str(save_tiny_clip(tmp_path / "other", seed=3)))
    assert text_tower_sha256(other) != text_tower_sha256(first)
    first.tokenizer.add_tokens(["zebroid"])
    assert text_tower_sha256(first) != text_tower_sha256(load_text_tower(str(tiny_clip_path)))


@pytest.mark.slow
def test_a_model_changed_between_runs_is_refused_not_mixed_in(copies, tmp_path, single_thread, capsys):
    """The same command after the model folder was retrained (or replaced) used to load the old weights' saved
    batches and results and report them, with the new ones', under one name and one hash. Now it stops in one
    line, whether the model's datasets were all done or half done, and the saved work and report stay."""
    import shutil

    from aft_hf.model import save_tiny_clip

    three, binary = copies
    model = save_tiny_clip(tmp_path / "run" / "final", seed=0)
    common = ["benchmark", "--model", str(model), "--eps", "4", "--iterations", "2", "--ce-restarts", "1",
              "--targets", "1", "--robust-images", "4", "--batch-size", "4", "--device", "cpu"]
    done = [*common, "--datasets", str(three), "--out", str(tmp_path / "done")]
    assert main(done) == 0
    assert main(done) == 0  # the same weights: resumed (nothing to do), not refused
    report = (tmp_path / "done" / "report.json").read_text()
    assert main([*common, "--datasets", str(three), str(binary), "--out", str(tmp_path / "half")]) == 0
    (state,) = [p for p in (tmp_path / "half" / "state").iterdir() if p.is_dir()]
    shutil.rmtree(state / "binary")  # as if killed before the second dataset
    (state / "three" / "result.json").unlink()  # ... and half way through the first one
    for batch in sorted((state / "three").glob("batch_*.json"))[1:]:
        batch.unlink()
    shutil.rmtree(model)
    save_tiny_clip(model, seed=5)  # retrained into the same folder
    capsys.readouterr()
    for args in (done, [*common, "--datasets", str(three), str(binary), "--out", str(tmp_path / "half")]):
        assert main(args) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the load's progress bar
        assert len(errors) == 1 and f"{model} has changed since this folder measured it" in errors[0], errors
    assert (tmp_path / "done" / "report.json").read_text() == report  # nothing lost
    assert len(list((state / "three").glob("batch_*.json"))) == 1
    assert main([*common, "--datasets", str(three), "--out", str(tmp_path / "new")]) == 0  # another --out measures it


@pytest.mark.slow
def test_a_text_tower_or_dataset_changed_between_runs_is_refused(copies, tmp_path, single_thread, capsys, monkeypatch):
    """Zero-shot numbers depend on the text tower and on the dataset's class names, templates and labels too: a
    resumed run whose --text-model folder was replaced, or whose data copy changed, used to report the old numbers."""
    import shutil

    from aft_hf.model import load_image_encoder, save_tiny_clip

    three, _ = copies
    data = shutil.copytree(three, tmp_path / "data" / "wds_three")
    save_tiny_clip(tmp_path / "full", seed=0)
    vision = tmp_path / "vision"
    encoder = load_image_encoder(str(tmp_path / "full"))
    encoder.vision.save_pretrained(vision)
    encoder.image_processor.save_pretrained(vision)
    text = save_tiny_clip(tmp_path / "text", seed=1)
    args = ["benchmark", "--model", str(vision), "--text-model", str(text), "--datasets", str(data), "--eps", "4",
            "--iterations", "2", "--ce-restarts", "1", "--targets", "1", "--robust-images", "4", "--batch-size", "8",
            "--device", "cpu", "--out", str(tmp_path / "b")]
    assert main(args) == 0
    assert main(args) == 0  # unchanged: resumed
    shutil.rmtree(text)
    save_tiny_clip(text, seed=2)
    capsys.readouterr()
    from aft_hf.benchmark import runner

    computed = []
    real = runner.BatchWork.compute
    monkeypatch.setattr(runner.BatchWork, "compute", lambda self, i: computed.append(i) or real(self, i))
    other = save_tiny_clip(tmp_path / "other", seed=7)  # a new model first: refused before any of its batches
    assert main([*args[:2], str(other), *args[1:]]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and f"the text tower of {vision} ({text}) has changed" in errors[0], errors
    assert computed == [] and not any("other" in p.name for p in (tmp_path / "b" / "state").iterdir())
    shutil.rmtree(text)
    save_tiny_clip(text, seed=1)  # the text tower back; now a class name fixed in the data copy
    assert main(args) == 0
    (data / "classnames.txt").write_text("cat\ndog\nsparrow\n")
    capsys.readouterr()
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "datasets[three]: its files changed (class names, templates, labels or shards)" in \
        errors[0], errors


def test_a_folder_from_before_the_dataset_fingerprint_resumes_on_the_fields_it_has(tmp_path):
    from aft_hf.benchmark.runner import check_settings

    old = {"models": ["m"], "datasets": [{"name": "c", "ref": "x/c", "images": 5}]}
    (tmp_path / "state" / "m" / "c").mkdir(parents=True)
    (tmp_path / "state" / "m" / "c" / "batch_000000.json").write_text("{}")
    (tmp_path / "state" / "settings.json").write_text(json.dumps(old))
    check_settings(tmp_path, {"models": ["m"], "datasets": [{"name": "c", "ref": "x/c", "images": 5,
                                                             "content_sha256": "f" * 64}]}, write=False)
    with pytest.raises(BenchmarkError, match=r"datasets\[c\]\.images: 5 -> 6"):
        check_settings(tmp_path, {"models": ["m"], "datasets": [{"name": "c", "ref": "x/c", "images": 6,
                                                                 "content_sha256": "f" * 64}]}, write=False)


@pytest.mark.slow
def test_a_comparison_is_extended_with_models_and_datasets_reusing_what_is_saved(copies, tmp_path, monkeypatch,
                                                                                single_thread):
    """Adding a model (or a dataset) to a finished comparison used to be refused as "other settings", so extending it
    meant recomputing everything. Now the saved (model, dataset) results are reused, whatever the order of --model, and
    a model keeps its own state folder even where a new model's name gives the same folder name."""
    from aft_hf.benchmark import runner
    from aft_hf.benchmark.weights import WEIGHTS_FILE
    from aft_hf.model import save_tiny_clip

    three, binary = copies
    a = save_tiny_clip(tmp_path / "org" / "model", seed=0)
    b = save_tiny_clip(tmp_path / "org__model", seed=3)  # the same folder name as a's
    protocol = Protocol(eps=(4,), robust_images=4, **CHEAP)
    out = tmp_path / "cmp"
    first = run_benchmark([str(a)], [DatasetRequest.from_ref(str(three))], out, protocol, print_fn=lambda s: None)
    real, computed = runner.BatchWork.compute, []
    monkeypatch.setattr(runner.BatchWork, "compute", lambda self, i: computed.append((self.folder.parent.name,
                                                                                        self.folder.name)) or real(self, i))
    both = run_benchmark([str(b), str(a)], [DatasetRequest.from_ref(str(binary)), DatasetRequest.from_ref(str(three))],
                         out, protocol, print_fn=lambda s: None)
    assert both["complete"] and both["models"] == [str(b), str(a)]
    assert both["results"][str(a)]["three"] == first["results"][str(a)]["three"]  # loaded, not recomputed
    folders = {json.loads(f.read_text())["model"]: f.parent.name for f in (out / "state").glob(f"*/{WEIGHTS_FILE}")}
    assert folders[str(a)] != folders[str(b)] and folders[str(b)].endswith("_2")  # a keeps the folder it had
    assert (folders[str(a)], "three") not in computed and (folders[str(a)], "binary") in computed
    assert {(folders[str(b)], "three"), (folders[str(b)], "binary")} <= set(computed)
    for model in (a, b):  # columns and cards follow the state folders, whatever the order of --model
        assert both["columns"][str(model)] == folders[str(model)]
        card = json.loads((out / both["card_reports"][str(model)]).read_text())
        assert both["card_reports"][str(model)] == f"card_{folders[str(model)]}.json" and card["model"] == str(model)
    assert f"`{folders[str(a)]}` = `{a}`" in (out / "report.md").read_text()  # each column named in full
    computed.clear()
    monkeypatch.chdir(tmp_path)  # the same folder spelled otherwise: the same state, nothing recomputed
    alone = run_benchmark(["./org/model"], [DatasetRequest.from_ref(str(three))], out, protocol, print_fn=lambda s: None)
    assert not computed and alone["results"]["./org/model"]["three"] == first["results"][str(a)]["three"]
    assert alone["columns"]["./org/model"] == folders[str(a)]
    settings = json.loads((out / "state" / "settings.json").read_text())
    assert settings["models"][:2] == [str(a), str(b)] and {d["name"] for d in settings["datasets"]} == {"three", "binary"}
    with pytest.raises(BenchmarkError, match=r"other settings \(datasets\[three\]\.clean_images: 15 -> 8; protocol"):
        run_benchmark([str(a)], [DatasetRequest.from_ref(str(three))], out, Protocol(eps=(4,), robust_images=4,
                                                                                     clean_images=8, **CHEAP),
                      print_fn=lambda s: None)


@pytest.mark.slow
def test_a_sample_smaller_than_asked_for_is_said(copies, tiny_clip_path, tmp_path, single_thread, caplog):
    three, _ = copies
    caplog.set_level("WARNING")
    report = run_benchmark([str(tiny_clip_path)], [DatasetRequest.from_ref(str(three))], tmp_path / "b",
                           Protocol(eps=(4,), robust_images=6, clean_images=4, **CHEAP), print_fn=lambda s: None)
    assert report["results"][str(tiny_clip_path)]["three"]["robust_images"] == 4
    assert "three: 4 images attacked, not the 6 asked for: it has 4 images in the clean sample (--clean-images)" in \
        caplog.text


def test_a_vision_only_model_without_a_text_model_is_refused_before_anything_is_written(tiny_vision_path, tmp_path,
                                                                                         monkeypatch, capsys):
    import aft_hf.benchmark.run as benchmark_run

    def no_data(*args, **kwargs):
        raise AssertionError("the datasets were read before the text tower was checked")

    monkeypatch.setattr(benchmark_run, "_open_all", no_data)
    code = main(["benchmark", "--model", str(tiny_vision_path), "--datasets", "clip-benchmark/wds_vtab-cifar10",
                 "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "no text tower for the vision-only model(s)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()  # no settings or manifest left behind
