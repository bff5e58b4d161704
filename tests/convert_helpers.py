"""A tiny open_clip ViT geometry and a fake Hub cache, shared by the conversion, hub and output-folder tests."""

from aft_hf.openclip.importer import VitGeometry

TINY = VitGeometry(width=32, layers=2, heads=2, mlp=64, patch=8, image=32, embed=16)


def fake_hub_repo(cache, repo_id, files, revision="main", commit="0" * 40):
    """The Hub cache layout huggingface_hub reads offline: refs/<revision> -> snapshots/<commit>/<files>."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (snap / name).write_bytes(content)
    return snap
