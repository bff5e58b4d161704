"""Output folders: only folders aft_hf wrote (marker file) are replaced, inputs and their parents never;
push builds in a staging folder and validates its inputs as the Hub would."""

import json

import pytest
import torch

from aft_hf.cli import main
from aft_hf.outputs import MARKER, OutputError, check_output_dir, is_marked


def _tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture
def run_dir(tmp_path, tiny_encoder):
    """A training output folder as the trainer leaves it, plus a file of the user's."""
    from aft_hf.model import export_pretrained

    run = tmp_path / "out" / "run"
    (run / "checkpoints" / "step_1").mkdir(parents=True)
    (run / "checkpoints" / "step_1" / "model.safetensors").write_bytes(b"state")
    (run / "notes.txt").write_text("my notes")
    export_pretrained(tiny_encoder, run / "final", extra_files={"aft_config.yaml": "seed: 0\n"})
    return run


@pytest.mark.slow
def test_push_never_deletes_the_run_folder(run_dir, capsys):
    """The reported bug: --out pointing at the folder above the model folder, with --overwrite."""
    before = _tree(run_dir)
    rc = main(["push", str(run_dir / "final"), "--repo-id", "me/x", "--dry-run", "--out", str(run_dir), "--overwrite"])
    assert rc == 2 and "contains the input" in capsys.readouterr().err
    assert _tree(run_dir) == before and (run_dir / "notes.txt").read_text() == "my notes"
    # inside the model folder: refused as well
    assert main(["push", str(run_dir / "final"), "--repo-id", "me/x", "--dry-run", "--out",
                 str(run_dir / "final" / "hub")]) == 2
    assert _tree(run_dir) == before


def test_overwrite_replaces_only_marked_folders(run_dir, tmp_path, capsys):
    final = run_dir / "final"
    assert is_marked(final)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "keep.txt").write_text("user data")
    rc = main(["push", str(final), "--repo-id", "me/x", "--dry-run", "--out", str(user), "--overwrite"])
    assert rc == 2 and "not written by aft_hf" in capsys.readouterr().err
    assert (user / "keep.txt").read_text() == "user data"

    hub = tmp_path / "hub"
    assert main(["push", str(final), "--repo-id", "me/x", "--dry-run", "--out", str(hub)]) == 0
    assert is_marked(hub) and json.loads((hub / MARKER).read_text())["writer"].startswith("aft-hf push")
    assert main(["push", str(final), "--repo-id", "me/x", "--dry-run", "--out", str(hub)]) == 2  # no --overwrite
    assert main(["push", str(final), "--repo-id", "me/y", "--dry-run", "--out", str(hub), "--overwrite"]) == 0
    assert "me/y" in (hub / "README.md").read_text()
    (hub / MARKER).unlink()  # a Hub folder of an earlier version (no marker): recognised by its card
    assert main(["push", str(final), "--repo-id", "me/z", "--dry-run", "--out", str(hub), "--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_out_is_an_existing_file(run_dir, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    rc = main(["push", str(run_dir / "final"), "--repo-id", "me/x", "--dry-run", "--out", str(tmp_path / "file.txt")])
    assert rc == 2 and "is an existing file" in capsys.readouterr().err
    assert (tmp_path / "file.txt").read_text() == "x"


def test_failed_dry_run_leaves_nothing_and_the_rerun_works(run_dir, tmp_path, capsys):
    out = tmp_path / "hub"
    rc = main(["push", str(run_dir / "final"), "--repo-id", "me/x", "--dry-run", "--out", str(out),
               "--figure", str(tmp_path)])  # a folder, not an image
    assert rc == 2 and "not a file" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert main(["push", str(run_dir / "final"), "--repo-id", "me/x", "--dry-run", "--out", str(out)]) == 0
    assert (out / "README.md").is_file()


@pytest.mark.parametrize("args,message", [
    (["--repo-id", "not a repo id!!"], "invalid --repo-id"),
    (["--repo-id", "me/x", "--license", "my weird license"], "not a Hub license id"),
    (["--repo-id", "me/x", "--report", "SUMMARY"], "not an `aft-hf evaluate` report"),
])
@pytest.mark.slow
def test_push_validates_like_the_hub(run_dir, tmp_path, capsys, args, message):
    summary = run_dir / "train_summary.json"
    summary.write_text(json.dumps({"steps": 1, "log_history": []}))
    args = [str(summary) if a == "SUMMARY" else a for a in args]
    rc = main(["push", str(run_dir / "final"), *args, "--dry-run", "--out", str(tmp_path / "hub")])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "hub").exists()


def test_good_license_and_repo_ids_pass(run_dir, tmp_path):
    for repo in ("me/clip-vit-b16-aft", "clip_aft.v2"):
        assert main(["push", str(run_dir / "final"), "--repo-id", repo, "--license", "cc-by-nc-4.0", "--dry-run",
                     "--out", str(tmp_path / repo.replace("/", "_"))]) == 0


def test_export_replaces_its_own_folder_only(tiny_encoder, tmp_path):
    from aft_hf.model import export_pretrained

    first = export_pretrained(tiny_encoder, tmp_path / "final")
    assert is_marked(first)
    export_pretrained(tiny_encoder, tmp_path / "final")  # a rerun replaces its own export
    older = tmp_path / "older"  # an export of an earlier version: no marker, but recognisable
    older.mkdir()
    (older / "config.json").write_text("{}")
    (older / "aft_config.yaml").write_text("seed: 0\n")
    assert is_marked(export_pretrained(tiny_encoder, older))
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2")
    with pytest.raises(OutputError, match="not written by aft_hf"):
        export_pretrained(tiny_encoder, other)
    assert _tree(other) == ["data.csv"]


def test_check_output_dir_path_relations(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(OutputError, match="contains the input"):
        check_output_dir(tmp_path / "a", True, inputs=[tmp_path / "a" / "b"])
    with pytest.raises(OutputError, match="contains the input"):
        check_output_dir(tmp_path / "a" / "..", True, inputs=[tmp_path / "a"])  # resolved before comparing
    with pytest.raises(OutputError, match="inside the input"):
        check_output_dir(tmp_path / "a" / "b" / "c", True, inputs=[tmp_path / "a"])
    assert check_output_dir(tmp_path / "new", inputs=[tmp_path / "a"]) == (tmp_path / "new").resolve()


def test_import_checkpoint_out_rules(tmp_path, tiny_clip_path, capsys):
    from safetensors.torch import save_file

    from aft_hf.openclip.importer import open_clip_shapes
    from tests.convert_helpers import TINY

    ckpt_dir = tmp_path / "ckpts"
    ckpt_dir.mkdir()
    save_file({k: torch.zeros(s) for k, s in open_clip_shapes(TINY).items()}, str(ckpt_dir / "v.safetensors"))
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("x")
    base = ["import-checkpoint", str(ckpt_dir / "v.safetensors"), "--base", str(tiny_clip_path), "--out"]
    assert main(base + [str(user)]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(base + [str(user), "--overwrite"]) == 2 and "not written by aft_hf" in capsys.readouterr().err
    assert main(base + [str(ckpt_dir), "--overwrite"]) == 2 and "contains the input" in capsys.readouterr().err
    assert (user / "keep.txt").is_file() and (ckpt_dir / "v.safetensors").is_file()


@pytest.fixture
def umask_022():
    """A shared-file-system umask (group and others may read), restored afterwards."""
    import os

    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root):
    import stat

    return {p.relative_to(root).as_posix() or ".": oct(stat.S_IMODE(p.stat().st_mode))
            for p in [root, *root.rglob("*")]}


def test_outputs_respect_the_umask(umask_022, run_dir, tmp_path):
    """Issue 20.9: final/, the push folder and checkpoints were 0700 with 0600 weights under umask 022."""
    from accelerate import Accelerator

    from aft_hf.checkpointing import Progress, save_checkpoint
    from aft_hf.files import current_umask

    assert current_umask() == 0o022
    final = run_dir / "final"
    modes = _modes(final)
    assert modes["."] == "0o755" and modes["model.safetensors"] == "0o644", modes
    assert set(modes.values()) <= {"0o755", "0o644"}
    hub = tmp_path / "hub"
    assert main(["push", str(final), "--repo-id", "me/x", "--dry-run", "--out", str(hub)]) == 0
    assert set(_modes(hub).values()) <= {"0o755", "0o644"} and _modes(hub)["."] == "0o755"

    acc = Accelerator(cpu=True)
    acc.prepare(torch.nn.Linear(2, 2))
    ckpt = save_checkpoint(acc, Progress(step=3), tmp_path / "run", None)
    modes = _modes(ckpt)
    assert modes["."] == "0o755" and modes["model.safetensors"] == "0o644", modes


def test_outputs_follow_a_private_umask(run_dir, tmp_path):
    """A 077 umask keeps the export private: the modes follow the umask, not a fixed 0644."""
    import os

    from aft_hf.model import export_pretrained, load_image_encoder

    old = os.umask(0o077)
    try:
        out = export_pretrained(load_image_encoder(str(run_dir / "final")), tmp_path / "private")
    finally:
        os.umask(old)
    assert _modes(out)["."] == "0o700" and _modes(out)["model.safetensors"] == "0o600"


def test_a_results_folder_never_mixes_two_runs(tmp_path):
    """What an earlier run wrote and this one did not rewrite is removed once this run finishes; files aft_hf
    did not write stay; a run that fails removes nothing and keeps listing the earlier entries."""
    import json

    from aft_hf.outputs import RESULTS_MANIFEST, results_folder

    out = tmp_path / "ev"
    with results_folder(out, "test") as folder:
        for name in ("report.json", "comparison.md"):
            (folder / name).write_text("first")
        (folder / "model_a").mkdir()
        (folder / "model_a" / "report.json").write_text("first")
    (out / "notes.txt").write_text("the user's")
    assert json.loads((out / RESULTS_MANIFEST).read_text())["entries"] == ["comparison.md", "model_a", "report.json"]
    with pytest.raises(RuntimeError):
        with results_folder(out, "test") as folder:
            (folder / "report.json").write_text("second, failed")
            raise RuntimeError("the run fails")
    assert (out / "comparison.md").is_file() and (out / "model_a").is_dir()  # nothing removed by a failed run
    with results_folder(out, "test") as folder:
        (folder / "report.json").write_text("third")
    assert sorted(p.name for p in out.iterdir()) == [RESULTS_MANIFEST, "notes.txt", "report.json"]
    assert (out / "report.json").read_text() == "third"
    assert json.loads((out / RESULTS_MANIFEST).read_text())["entries"] == ["report.json"]


def test_a_results_folder_belongs_to_one_command(tmp_path):
    """evaluate into explain's folder would remove the maps as stale; benchmark would replace evaluate's
    report.json: another command's results folder is refused, in one line naming the command."""
    from aft_hf.outputs import OutputError, check_results_owner, claim_results_folder, results_folder

    with results_folder(tmp_path / "maps", "aft-hf explain") as folder:
        (folder / "maps.pt").write_text("maps")
    check_results_owner(tmp_path / "maps", "aft-hf explain")  # its own command may run again
    check_results_owner(tmp_path / "new", "aft-hf evaluate")  # a folder with no results yet
    with pytest.raises(OutputError, match=r"holds the results of `aft-hf explain`, which `aft-hf evaluate` would"):
        with results_folder(tmp_path / "maps", "aft-hf evaluate"):
            pass
    assert (tmp_path / "maps" / "maps.pt").read_text() == "maps"
    with pytest.raises(OutputError, match="results of `aft-hf explain`"):
        claim_results_folder(tmp_path / "maps", "aft-hf benchmark")
    claim_results_folder(tmp_path / "bench", "aft-hf benchmark")
    claim_results_folder(tmp_path / "bench", "aft-hf benchmark")  # a resumed benchmark
    with pytest.raises(OutputError, match="results of `aft-hf benchmark`"):
        check_results_owner(tmp_path / "bench", "aft-hf evaluate")


def test_push_onto_an_evaluate_results_folder_names_those_results(run_dir, tmp_path, capsys):
    """--out that holds `aft-hf evaluate` results: the refusal names them (it said 'not written by aft_hf'), with
    or without --overwrite, and the results stay."""
    from aft_hf.outputs import results_folder

    with results_folder(tmp_path / "ev", "aft-hf evaluate") as folder:
        (folder / "report.json").write_text("{}")
    before = _tree(tmp_path / "ev")
    for extra in ([], ["--overwrite"]):
        rc = main(["push", str(run_dir / "final"), "--repo-id", "me/x", "--dry-run", "--out", str(tmp_path / "ev"),
                   *extra])
        err = capsys.readouterr().err
        assert rc == 2 and "holds the results of `aft-hf evaluate`, which this would delete" in err, err
        assert _tree(tmp_path / "ev") == before


def test_a_results_folder_killed_mid_run_is_not_mixed_by_the_next_run(tmp_path):
    """`kill -9` during an evaluate run: the next finished run still removes the results of the run before the kill
    that it did not rewrite (the kill used to leave the manifest without them, so two runs' results mixed)."""
    import subprocess
    import sys

    from aft_hf.outputs import RESULTS_MANIFEST, results_folder

    out = tmp_path / "ev"
    with results_folder(out, "aft-hf evaluate") as folder:  # a finished two-model run
        for name in ("comparison.md", "a", "b"):
            (folder / name).mkdir() if name in "ab" else (folder / name).write_text("old")
    killed = ("import os, signal, sys\nfrom aft_hf.outputs import results_folder\n"
              "with results_folder(sys.argv[1], 'aft-hf evaluate') as f:\n"
              "    (f / 'report.json').write_text('half')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", killed, str(out)]).returncode == -9
    with results_folder(out, "aft-hf evaluate") as folder:  # then a one-model run that writes report.json only
        (folder / "report.json").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [RESULTS_MANIFEST, "report.json"]
    assert json.loads((out / RESULTS_MANIFEST).read_text())["entries"] == ["report.json"]


def test_train_into_an_evaluate_results_folder_names_those_results(tmp_path, capsys):
    """An evaluate folder whose model was labelled `final` made train say `final/` 'was not written by aft_hf';
    the folder's results are named instead, before anything loads, and stay."""
    from aft_hf.outputs import results_folder

    with results_folder(tmp_path / "ev", "aft-hf evaluate") as folder:
        (folder / "final").mkdir()
        (folder / "final" / "report.json").write_text("{}")
    before = _tree(tmp_path / "ev")
    rc = main(["train", "--config", "tiny_offline", "--output_dir", str(tmp_path / "ev"), "--max_steps", "2",
               "--warmup_steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds the results of `aft-hf evaluate`" in err and "give another --output_dir" in err, err
    assert _tree(tmp_path / "ev") == before
