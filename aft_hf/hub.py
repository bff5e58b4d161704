"""Publishing to the Hugging Face Hub: a Hub-ready folder with a model card, and the push.

    exported folder (+ evaluate report and its figures, a saliency figure)
        -> prepare_hub_folder: weights/processor copied, README.md card, report, figures
        -> push_folder: create_repo(exist_ok=True) + upload_folder (in-progress files ignored)

The card is built with ``huggingface_hub``'s ``ModelCardData``/``ModelCard`` from facts found in the
folder only: ``config.json`` (architecture), ``aft_config.yaml`` (the training recipe, written by
the trainer), ``aft_import.json`` (provenance of a converted checkpoint, written by
``aft_hf.openclip.importer``), the evaluate report and the figures. A section without data is left out.
The token comes from ``HF_TOKEN`` or the login cache; it is never printed, logged or written.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

from huggingface_hub import HfApi, get_token

from .errors import AftError
from .files import WEIGHTS_HASH_KEY, folder_weights_sha256
from .model import run_folder_hint
from .outputs import MARKER, OutputError, check_output_dir, discard, replace_dir, staging_dir, write_marker
from .published import publishable, rewrite_for_upload

logger = logging.getLogger(__name__)

# In-progress training state never goes to the Hub.
IGNORE_PATTERNS = ["checkpoints/*", "*.tmp*", ".tmp_*", "logs/*", MARKER]
ASSETS_DIR = "assets"


class HubError(AftError, RuntimeError):
    """Publishing failed; the message says why (never containing the token)."""


from .card import REPORT_FILE, CardError, build_model_card, check_license  # noqa: E402  (the card lives in aft_hf.card)

# --------------------------------------------------------------------------- the Hub folder


def _ignored(rel: str) -> bool:
    """Whether ``upload_folder(ignore_patterns=IGNORE_PATTERNS)`` would skip this relative path."""
    return any(fnmatch.fnmatch(rel, p) for p in IGNORE_PATTERNS)


def load_report(path: Union[str, Path]) -> dict:
    """Read an ``aft-hf evaluate`` report (JSON object with ``schema_version`` and ``metrics``)."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HubError(f"could not read the report '{path}': {e}") from e
    if not isinstance(report, dict):
        raise HubError(f"the report '{path}' is not a JSON object")
    check_report(report, str(path))
    return report


def check_report(report: dict, name: str = "the report") -> None:
    """Refuse anything that is not an evaluate report (e.g. a train_summary.json) before it reaches the card.

    A report of several models (``{"reports": [...]}``, written by ``aft-hf evaluate`` with several
    ``--model``) is checked row by row.
    """
    from .constants import REPORT_SCHEMA_VERSION as SCHEMA_VERSION

    if isinstance(report.get("reports"), list) and "metrics" not in report:
        if not report["reports"] or not all(isinstance(r, dict) for r in report["reports"]):
            raise HubError(f"'{name}' has an empty or malformed 'reports' list: pass a report.json written by "
                           "`aft-hf evaluate`")
        for row in report["reports"]:
            check_report(row, name)
        return
    if "schema_version" not in report or not isinstance(report.get("metrics"), dict):
        found = ", ".join(map(str, list(report)[:8])) or "nothing"
        raise HubError(f"'{name}' is not an `aft-hf evaluate` report (it needs 'schema_version' and a 'metrics' "
                       f"object; found keys: {found}): pass the report.json written by `aft-hf evaluate`, or the "
                       "card_<model>.json that `aft-hf benchmark` writes beside its report.json")
    if report["schema_version"] != SCHEMA_VERSION:
        raise HubError(f"'{name}' has report schema_version {report['schema_version']!r}; this aft_hf reads "
                       f"schema {SCHEMA_VERSION}: re-run `aft-hf evaluate` with this version")


def _row_name(row: dict) -> str:
    label, model = row.get("label"), row.get("model")
    return f"{label} ({model})" if label and model and label != model else str(label or model or "?")


def report_for_folder(report: dict, folder: Union[str, Path], allow_unverified: bool = False,
                      name: str = "the report") -> dict:
    """The row of ``report`` (one model's report, or ``{"reports": [...]}``) that measured ``folder``'s weights.

    Rows carry the hash of the image tower they measured (``weights_sha256``, see
    :func:`aft_hf.files.tower_weights_sha256`); only a row with this folder's hash may reach its card.
    A report without hashes (an earlier aft_hf) is taken only with ``allow_unverified``, and then only
    a single-model report, or the row whose ``model`` is this folder.
    """
    folder = Path(folder).resolve()
    rows = report["reports"] if isinstance(report.get("reports"), list) and "metrics" not in report else [report]
    hashed = [r for r in rows if r.get(WEIGHTS_HASH_KEY)]
    if hashed:
        mine = folder_weights_sha256(folder)
        if mine is None:
            raise HubError(f"'{folder}' holds no model.safetensors (or pytorch_model.bin): nothing to check the "
                           f"report against")
        matches = [r for r in hashed if r[WEIGHTS_HASH_KEY] == mine]
        if not matches:
            measured = "; ".join(f"{_row_name(r)} [weights {r[WEIGHTS_HASH_KEY][:12]}]" for r in hashed)
            fix = (f"benchmark this folder (`aft-hf benchmark --model {folder} ...`) and pass its card_<model>.json"
                   if any(r.get("measured_with") == "aft-hf benchmark" for r in hashed) else
                   f"evaluate this folder with `aft-hf evaluate --model {folder} ...` and pass that report")
            raise HubError(f"{name} has no row for '{folder}' (weights {mine[:12]}); it measured {measured}: {fix}")
        if len(matches) > 1:
            logger.info("%d rows of %s measured these weights; the card shows the first (%s)", len(matches), name,
                        _row_name(matches[0]))
        return matches[0]
    if not allow_unverified:
        raise HubError(f"{name} records no weights hash (written by an aft_hf before {WEIGHTS_HASH_KEY} existed), so "
                       f"nothing shows it measured '{folder}': re-run `aft-hf evaluate --model {folder}`, or pass "
                       "--allow-unverified-report if you know it did")
    if len(rows) == 1:
        logger.warning("%s records no weights hash: its numbers go on the card of '%s' unverified", name, folder)
        return rows[0]
    same = [r for r in rows if r.get("model") and Path(str(r["model"])).expanduser().resolve() == folder]
    if len(same) != 1:
        raise HubError(f"{name} holds {len(rows)} models and no weights hashes, and no single row names '{folder}': "
                       "pass the report.json of this model's sub-folder")
    logger.warning("%s records no weights hash: row '%s' goes on the card unverified", name, _row_name(same[0]))
    return same[0]


def check_repo_id(repo_id: Optional[str]) -> None:
    """Validate a repo id as the Hub does (``huggingface_hub.utils.validate_repo_id``)."""
    if repo_id is None:
        return
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"invalid --repo-id '{repo_id}': {str(e).splitlines()[0]} (expected 'user/name' or 'name')"
                       ) from None


def _copy_figure(src: Path, out: Path) -> str:
    """Copy a figure into ``out/assets`` after checking it is an image; returns its relative path."""
    if not src.is_file():
        raise HubError(f"the figure '{src}' is not a file (give an image file, e.g. saliency.png)")
    try:
        from PIL import Image

        with Image.open(src) as im:
            im.verify()
    except Exception as e:
        raise HubError(f"the figure '{src}' is not a readable image: {e}") from e
    rel, n = f"{ASSETS_DIR}/{src.name}", 1
    while (out / rel).exists():  # two figures of the same name
        rel, n = f"{ASSETS_DIR}/{src.stem}_{n}{src.suffix}", n + 1
    (out / ASSETS_DIR).mkdir(exist_ok=True)
    shutil.copy2(src, out / rel)
    return rel


def prepare_hub_folder(folder: Union[str, Path], out: Union[str, Path], repo_id: Optional[str] = None,
                       report: Union[str, Path, dict, None] = None, figure: Union[str, Path, None] = None,
                       license: Optional[str] = None, overwrite: bool = False, allow_network: bool = False,
                       tags: Sequence[str] = (), allow_unverified_report: bool = False) -> Path:
    """Build the exact folder that is uploaded: weights and processor files, README.md card, report, figures.

    Files matching ``IGNORE_PATTERNS`` (checkpoints in progress, logs) are not copied. A report
    read from a file brings its figures (``"figures": {name: path relative to the report}``);
    ``figure`` adds a saliency figure of your own. The folder is built next to ``out`` and moved
    into place at the end, so a failure leaves ``out`` untouched; ``overwrite`` replaces only a
    folder that aft_hf wrote (see :mod:`aft_hf.outputs`). Only the report's row that measured this
    folder's weights reaches the card (:func:`report_for_folder`; ``allow_unverified_report`` takes a
    report of an earlier aft_hf that records no weights hash).
    """
    folder = Path(folder).resolve()
    if folder.is_file():
        raise HubError(f"'{folder}' is a file; give the model folder that holds it ('{folder.parent}')")
    if not (folder / "config.json").is_file():
        raise HubError(f"'{folder}' is not an exported model folder (no config.json){run_folder_hint(folder)}")
    check_repo_id(repo_id)
    check_license(license)
    if figure is not None and not Path(figure).is_file():
        raise HubError(f"the figure '{figure}' is not a file (give an image file, e.g. saliency.png)")
    files = [p for p in (report, figure) if isinstance(p, (str, Path))]
    _adopt_earlier_hub_folder(Path(out))
    try:
        out = check_output_dir(out, overwrite, inputs=[folder], input_files=files)
    except OutputError as e:
        raise HubError(str(e)) from None
    report_dict = load_report(report) if isinstance(report, (str, Path)) else report
    if isinstance(report_dict, dict):
        check_report(report_dict)
        report_dict = report_for_folder(report_dict, folder, allow_unverified_report,
                                        f"the report '{report}'" if isinstance(report, (str, Path)) else "the report")
    tmp = staging_dir(out)
    try:
        _fill_hub_folder(tmp, folder, report, report_dict, figure, repo_id, license, allow_network, tags)
        write_marker(tmp, "aft-hf push (Hub folder)")
    except BaseException:
        discard(tmp)
        raise
    return replace_dir(tmp, out)


def _adopt_earlier_hub_folder(out: Path) -> None:
    """A Hub folder built by an aft_hf version before markers existed is recognised by its card and marked."""
    readme = out / "README.md"
    if out.is_dir() and not (out / MARKER).exists() and (out / "config.json").is_file() and readme.is_file() \
            and "Card generated by aft_hf" in readme.read_text(errors="replace"):
        write_marker(out, "aft-hf push (a Hub folder of an earlier aft_hf version)")


def _fill_hub_folder(out: Path, folder: Path, report, report_dict: Optional[dict], figure, repo_id, license,
                     allow_network: bool, tags: Sequence[str]) -> None:
    """Write the Hub folder's files into the (empty) staging folder ``out``."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not _ignored(rel) and rel != "README.md":
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out / rel)
    figures: dict[str, str] = {}
    if figure is not None:
        figures["Saliency maps"] = _copy_figure(Path(figure), out)
    if report_dict is not None:
        report_dict = dict(report_dict)
        report_figures = report_dict.get("figures") if isinstance(report_dict.get("figures"), dict) else {}
        moved = {}
        for name, rel in report_figures.items():
            src = Path(report).parent / str(rel) if isinstance(report, (str, Path)) else None
            if src is not None and src.is_file():
                moved[name] = _copy_figure(src, out)
                measured = report_dict.get("measured_with") or "aft-hf evaluate"
                figures[f"{name.replace('_', ' ').capitalize()} ({measured})"] = moved[name]
            else:
                logger.info("figure '%s' of the report not found: left out of the card", rel)
        if report_figures:
            report_dict["figures"] = moved  # paths inside the Hub folder; the numbers are not touched
        report_dict = publishable(report_dict)
        (out / REPORT_FILE).write_text(json.dumps(report_dict, indent=2))
    rewrite_for_upload(out)  # aft_config.yaml & co.: local paths -> local:<name> (aft_hf.published)
    try:
        card = build_model_card(out, repo_id=repo_id, report=report_dict, figures=figures, license=license,
                                allow_network=allow_network, extra_tags=tags)
    except CardError as e:
        raise HubError(str(e)) from e
    card.save(out / "README.md")


# --------------------------------------------------------------------------- push


OFFLINE_PUSH = "HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it, or use --dry-run --out DIR"


def require_online(what: str = "") -> None:
    """Refuse a push in offline mode before any work (and before anything says "uploading")."""
    from .env import hub_offline

    if hub_offline():
        raise HubError(f"{what}{OFFLINE_PUSH}")


def require_token(token: Optional[str]) -> str:
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token: run `hf auth login` or set HF_TOKEN before pushing "
                       "(or use --dry-run --out DIR to build the folder without uploading)")
    return token


def _explain(e: Exception, token: str) -> str:
    """A one-line reason for a failed push, with the token scrubbed out of anything echoed."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled):
        why = OFFLINE_PUSH
    elif isinstance(e, HfHubHTTPError) and e.response is not None and e.response.status_code in (401, 403):
        why = (f"the Hub refused the token (HTTP {e.response.status_code}): log in again with `hf auth login` "
               "and check that the token has write access to this repo")
    elif isinstance(e, (ConnectionError, TimeoutError)) or "connect" in type(e).__name__.lower() \
            or "timeout" in type(e).__name__.lower():
        why = f"could not reach the Hub (no network?): {type(e).__name__}: {e}"
    else:
        why = f"{type(e).__name__}: {e}"
    return why.replace(token, "***")


def retry_command(folder: Union[str, Path, None], repo_id: Optional[str], private: bool = False) -> str:
    """The ``aft-hf push`` command that uploads ``folder`` (an exported model) to ``repo_id``."""
    return f"aft-hf push {folder or '<output_dir>/final'} --repo-id {repo_id}" + (" --private" if private else "")


def push_folder(folder: Union[str, Path], repo_id: str, private: bool = False, token: Optional[str] = None,
                commit_message: str = "Upload AFT fine-tuned CLIP (aft_hf)", source: Union[str, Path, None] = None,
                extra_options: str = "", name: Optional[str] = None) -> str:
    """Upload a folder as it is to ``repo_id`` (``create_repo(exist_ok=True)`` + ``upload_folder``).

    Returns the commit URL. The token comes from the argument, ``HF_TOKEN`` or the login cache.
    ``source``: the exported model ``folder`` was built from (a temporary Hub folder); a failure then
    names it and the ``aft-hf push`` command that retries (``extra_options`` appended to it); ``name``
    names the folder in a failure instead (e.g. ``the model of step 200``).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HubError(f"'{folder}' is not an exported model folder (no config.json){run_folder_hint(folder)}")
    require_online(f"could not push {name or repr(str(folder))} to '{repo_id}': ")
    token = require_token(token)
    api = HfApi(token=token)
    logger.info("uploading %s to %s", folder, repo_id)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 ignore_patterns=IGNORE_PATTERNS, repo_type="model")
    except Exception as e:  # offline mode, no network, HTTP errors: one clear message
        if source is None:
            raise HubError(f"could not push {name or repr(str(folder))} to '{repo_id}': {_explain(e, token)}") from None
        retry = retry_command(Path(source), repo_id, private) + extra_options
        raise HubError(f"could not push '{source}' to '{repo_id}': {_explain(e, token)}; the model stays in "
                       f"'{source}': retry with `{retry}`") from None
    return str(getattr(info, "commit_url", info))


def push_model(folder: Union[str, Path], repo_id: str, report: Union[str, Path, dict, None] = None,
               figure: Union[str, Path, None] = None, private: bool = False, license: Optional[str] = None,
               token: Optional[str] = None, staging: Union[str, Path, None] = None, overwrite: bool = False,
               tags: Sequence[str] = (), allow_unverified_report: bool = False) -> str:
    """Build the Hub folder (card included) and upload it; what ``aft-hf push`` and training's push do.

    ``staging`` keeps the built folder there; by default it is built in a temporary folder.
    """
    check_repo_id(repo_id)
    check_license(license)
    require_online(f"could not push '{folder}' to '{repo_id}': ")  # fail before any work, as without a token
    token = require_token(token)
    source = Path(folder).resolve()
    extra = "".join(f" --{k} {v}" for k, v in (("report", report), ("figure", figure), ("license", license))
                    if isinstance(v, (str, Path)))
    if staging is not None:
        built = prepare_hub_folder(folder, staging, repo_id, report, figure, license, overwrite, allow_network=True,
                                   tags=tags, allow_unverified_report=allow_unverified_report)
        return push_folder(built, repo_id, private=private, token=token, source=source, extra_options=extra)
    with tempfile.TemporaryDirectory(prefix="aft_hf_hub_") as tmp:
        built = prepare_hub_folder(folder, Path(tmp) / "hub", repo_id, report, figure, license, allow_network=True,
                                   tags=tags, allow_unverified_report=allow_unverified_report)
        return push_folder(built, repo_id, private=private, token=token, source=source, extra_options=extra)
