"""Fault-injection driver for ``tests/test_train_faults.py`` (run as a script, not collected by pytest).

One process imports the trainer once, then runs every training run in a forked child process:

1. a reference run, uninterrupted;
2. a run killed with SIGKILL during a checkpoint save (the moment of the save drawn at random:
   after the state files, before the folder rename, or after the rename before pruning);
3. a resume killed with SIGKILL in the middle of a random step (after backward, before the update);
4. a resume stopped with SIGTERM at a random step (it must save and exit with code 143);
5. a resume to the end.

Every run after the first uses ``--resume_from_checkpoint latest``. Prints one JSON report: the faults,
how each child ended, steps lost, checkpoints lost, and whether the final weights are bitwise equal
to the reference. Usage: ``python tests/fault_driver.py '{"args": [...], "out": DIR, "seed": N}'``.
"""

import json
import os
import random
import signal
import sys
from pathlib import Path

MARKER = ".fault_last_step"


def _install(fault: tuple, out: Path) -> None:
    """Patch the trainer in this (child) process so that it dies at the fault's moment."""
    import aft_hf.checkpointing as ck
    import aft_hf.train as tr

    kind, at = fault
    count = {"n": 0}

    def hit() -> bool:
        count["n"] += 1
        return count["n"] == at

    after_step = tr.TrainingLoop.after_step

    def record(self, batch, stop):  # completed steps, for the "steps lost" count
        (out / MARKER).write_text(str(self.progress.step))
        return after_step(self, batch, stop)

    tr.TrainingLoop.after_step = record
    if kind in ("kill_mid_step", "sigterm"):
        grad_norm, sig = tr._grad_norm, signal.SIGKILL if kind == "kill_mid_step" else signal.SIGTERM

        def patched_grad_norm(*a, **k):
            if hit():
                os.kill(os.getpid(), sig)
            return grad_norm(*a, **k)

        tr._grad_norm = patched_grad_norm
    elif kind == "kill_save:before_progress":  # state files written, progress.json not yet
        write_json = ck.write_json

        def patched_write_json(path, value):
            if Path(path).name == ck.PROGRESS_FILE and hit():
                os.kill(os.getpid(), signal.SIGKILL)
            return write_json(path, value)

        ck.write_json = patched_write_json
    elif kind == "kill_save:before_rename":  # everything written, fsync under way
        fsync_tree = ck._fsync_tree

        def patched_fsync_tree(folder):
            if hit():
                os.kill(os.getpid(), signal.SIGKILL)
            return fsync_tree(folder)

        ck._fsync_tree = patched_fsync_tree
    elif kind == "kill_save:before_prune":
        publish = ck._publish

        def patched_publish(tmp, final):
            publish(tmp, final)
            if hit():
                os.kill(os.getpid(), signal.SIGKILL)

        ck._publish = patched_publish


def _run(args: list, out: Path, fault) -> int:
    """Fork a child that trains (with ``fault`` installed); returns its exit code or -signal."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            from aft_hf.cli import main

            if fault is not None:
                _install(fault, out)
            code = main(["train", *args])
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _checkpoints(out: Path) -> dict:
    from aft_hf.checkpointing import check_checkpoint, list_checkpoints

    good = {}
    for p in list_checkpoints(out):
        try:
            good[p.name] = check_checkpoint(p).step
        except Exception:  # reported as lost
            pass
    return good


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def main() -> None:
    spec = json.loads(sys.argv[1])
    root, args, rng = Path(spec["out"]), spec["args"], random.Random(spec["seed"])
    import aft_hf.train  # noqa: F401  (import once, before forking)

    ref, out = root / "reference", root / "faulted"
    report = {"seed": spec["seed"], "reference_rc": _run([*args, "--output_dir", str(ref)], ref, None), "faults": []}
    max_steps = spec["max_steps"]
    faults = [(rng.choice(["kill_save:before_progress", "kill_save:before_rename", "kill_save:before_prune"]),
               rng.randint(2, 3)),  # the save at step 4 or 6: the one at step 2 must survive
              ("kill_mid_step", rng.randint(1, 4)),
              ("sigterm", None)]  # its step is drawn below, once the resume point is known
    resume = ["--output_dir", str(out), "--resume_from_checkpoint", "latest"]
    for fault in faults:
        before = _checkpoints(out)
        if fault[1] is None:  # SIGTERM strictly before the last step: a stop during the last step just finishes
            fault = (fault[0], rng.randint(1, max(1, max_steps - max(before.values(), default=0) - 1)))
        (out / MARKER).unlink(missing_ok=True)
        rc = _run([*args, *resume], out, fault)
        after = _checkpoints(out)
        start = max(before.values(), default=0)  # where this run resumed; no step done yet when no marker
        done = int((out / MARKER).read_text()) if (out / MARKER).is_file() else start
        latest = max(after.values(), default=0)
        report["faults"].append({
            "fault": f"{fault[0]} #{fault[1]}", "rc": rc, "completed_steps": done, "resumable_from": latest,
            "steps_lost": done - latest,
            # a checkpoint that was complete before the fault and is gone now, other than by rotation
            "checkpoints_lost": [n for n in before if n not in after and before[n] >= min(after.values(), default=0)],
            "stale_tmp": sorted(p.name for p in (out / "checkpoints").glob(".tmp*")) if (out / "checkpoints").is_dir()
            else []})
    report["final_rc"] = _run([*args, *resume], out, None)
    report["stale_tmp_at_end"] = sorted(p.name for p in (out / "checkpoints").glob(".tmp*"))
    summary = json.loads((out / "train_summary.json").read_text()) if (out / "train_summary.json").is_file() else {}
    report["summary_steps"] = summary.get("steps")
    report["summary_images"] = summary.get("images_seen")
    report["summary_logged_steps"] = [h["step"] for h in summary.get("log_history", [])]
    a, b = _weights(ref / "final"), _weights(out / "final")
    report["bitwise_equal"] = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    report["max_steps"] = max_steps
    print("FAULT_REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
