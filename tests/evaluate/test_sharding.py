"""Sharding of evaluation batches across processes (aft_hf.evaluate.sharding): several shards give the
one-process per-image results, in process (threads with an all-gather) and under `accelerate launch`."""

import copy
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from aft_hf.cli import main
from aft_hf.evaluate import EvaluationError, ZeroShotClassifier, evaluate_model, predict
from aft_hf.evaluate.sharding import Shard, batch_seed, in_batch_order, map_batches
from aft_hf.evaluate.zeroshot import robust_accuracy, robust_verdicts

REPO = Path(__file__).resolve().parents[2]
NAMES = ["red circle", "blue square", "green triangle"]


class ThreadGather:
    """An all-gather between ``n`` threads standing for processes (process order = thread index)."""

    def __init__(self, n: int):
        self.slots, self.barrier = [None] * n, threading.Barrier(n, timeout=120)

    def shard(self, index: int) -> Shard:
        def gather(records: list) -> list:
            self.slots[index] = records
            self.barrier.wait()
            out = [r for slot in self.slots for r in slot]
            self.barrier.wait()  # every thread has read before the next gather overwrites a slot
            return out

        return Shard(index, len(self.slots), gather)


def run_sharded(n: int, job):
    """``job(shard)`` in ``n`` threads, each with its own shard (as ``n`` processes would); their results."""
    gather, results, errors = ThreadGather(n), [None] * n, []

    def one(i):
        try:
            results[i] = job(gather.shard(i))
        except Exception as e:  # pragma: no cover - surfaced below
            errors.append(e)
            gather.barrier.abort()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="module")
def problem(tiny_clip_path):
    """Tiny CLIP, 7 random images, labels right on the even images and wrong on the odd ones."""
    from aft_hf.explain import load_text_tower
    from aft_hf.model import load_image_encoder

    torch.manual_seed(0)
    encoder = load_image_encoder(str(tiny_clip_path)).eval()
    text = load_text_tower(str(tiny_clip_path))
    classifier = ZeroShotClassifier(encoder, text.class_embeddings(NAMES), text.logit_scale)
    images = torch.rand(7, 3, 32, 32)
    pred = predict(classifier, images, progress=False).argmax(1)
    labels = torch.where(torch.arange(7) % 2 == 0, pred, (pred + 1) % len(NAMES))
    return encoder, text, classifier, images, labels


def test_shard_owns_every_pth_batch_and_the_gather_is_checked():
    shard = Shard(1, 3, lambda records: records)
    assert shard.batches(8) == [1, 4, 7] and not shard.is_main
    with pytest.raises(EvaluationError, match="index must lie"):
        Shard(2, 2, lambda r: r)
    with pytest.raises(EvaluationError, match="all-gather"):
        Shard(0, 2)
    with pytest.raises(EvaluationError, match="expected 0..2 each once"):
        in_batch_order([{"batch": 0}, {"batch": 2}, {"batch": 2}], 3, "x")
    assert batch_seed(0, 1, 0) != batch_seed(0, 0, 1) != batch_seed(1, 0, 0)
    # a shard that lost a batch (its gather returns only its own) is refused, not silently averaged
    with pytest.raises(EvaluationError, match="gathered batches"):
        map_batches(6, 2, lambda b, s, e: b, Shard(0, 2, lambda records: records))


@pytest.mark.parametrize("processes", [2, 3])
def test_shards_give_the_one_process_logits(problem, single_thread, processes):
    _, _, classifier, images, _ = problem
    one = predict(classifier, images, batch_size=2, progress=False)
    for logits in run_sharded(processes, lambda s: predict(copy.deepcopy(classifier), images, 2, False, s)):
        assert torch.equal(logits, one)


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["apgd", "pgd"])
def test_shards_give_the_one_process_robust_verdicts(problem, single_thread, attack):
    _, _, classifier, images, labels = problem
    kwargs = dict(eps=(0, 2, 64), steps=2, batch_size=2, seed=3, progress=False, attack=attack, targets=2)
    one = robust_verdicts(classifier, images, labels, **kwargs)
    assert torch.equal(one["0/255"], torch.arange(7) % 2 == 0)  # eps 0: correct clean
    assert not one["64/255"].all()
    for verdicts in run_sharded(2, lambda s: robust_verdicts(copy.deepcopy(classifier), images, labels, **kwargs,
                                                             shard=s)):
        assert verdicts.keys() == one.keys()
        assert all(torch.equal(verdicts[k], one[k]) for k in one)
    shares = robust_accuracy(classifier, images, labels, **kwargs)
    assert shares == {k: int(v.sum()) / 7 for k, v in one.items()}


def _comparable(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("created", "timing_s")}


def test_evaluate_model_under_two_shards_equals_one_process(problem, single_thread):
    encoder, text, _, images, labels = problem
    args = (NAMES, ["a photo of a {}."], images, labels, ["zeroshot", "robust"], ["saliency"], None,
            {"robust": {"eps": (1, 64), "steps": 2, "targets": 2}}, 3, 0, False)
    one, _ = evaluate_model(encoder, text, *args)
    per = one["per_image"]
    assert per["label"] == labels.tolist() and len(per["zeroshot_pred"]) == 7
    hits = sum(p == y for p, y in zip(per["zeroshot_pred"], per["label"]))
    assert one["metrics"]["zeroshot_top1"] == pytest.approx(hits / 7)
    assert one["metrics"]["robust_top1"] == {k: sum(v) / 7 for k, v in per["robust"].items()}
    assert "per_image" not in one["metrics"]
    for report, _ in run_sharded(2, lambda s: evaluate_model(copy.deepcopy(encoder), text, *args, shard=s)):
        assert _comparable(report) == _comparable(one)


def test_metrics_that_do_not_shard_are_refused_before_any_work(problem, tmp_path, monkeypatch, capsys):
    encoder, text, _, images, labels = problem
    with pytest.raises(EvaluationError, match="deletion run in one process only"):
        evaluate_model(encoder, text, NAMES, ["{}"], images, labels, ["zeroshot", "deletion"],
                       shard=Shard(0, 2, lambda r: r))
    import aft_hf.commands.evaluate as command

    monkeypatch.setattr(command, "load_models_and_texts", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["evaluate", "--model", "m", "--dataset", "builtin:shapes", "--metrics", "zeroshot", "gini",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "gini run in one process only, but 2 processes" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from aft_hf.data import write_shapes_imagefolder

    return write_shapes_imagefolder(tmp_path_factory.mktemp("shapes") / "data", num_images=9, size=40)


@pytest.mark.slow
def test_evaluate_with_two_processes_equals_one(tiny_clip_path, shapes, tmp_path, single_thread):
    common = ["evaluate", "--model", str(tiny_clip_path), "--dataset", str(shapes), "--metrics", "zeroshot",
              "robust", "--methods", "saliency", "--eps", "1", "32", "--attack-steps", "2", "--attack-targets", "1",
              "--batch-size", "2", "--max-samples", "9", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0  # one process: this one
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", "0", "-m", "aft_hf"]
    two = subprocess.run(launcher + common + ["--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("report.json") == 1  # only the main process writes (and says so)
    a = json.loads((tmp_path / "one" / "report.json").read_text())
    b = json.loads((tmp_path / "two" / "report.json").read_text())
    assert _comparable(a) == _comparable(b)
    assert len(b["per_image"]["zeroshot_pred"]) == 9 and set(b["per_image"]["robust"]) == {"1/255", "32/255"}
    refused = subprocess.run(launcher + common[:6] + ["deletion", "--out", str(tmp_path / "no")], env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "aft-hf evaluate: error: metric(s) deletion run in one process only" in \
        refused.stderr  # each rank says it in one line (the launcher then reports the failed ranks)
