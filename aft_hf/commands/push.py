"""``aft-hf push``: build the Hub folder of an exported model (card included) and upload it."""

from __future__ import annotations

import argparse

from ..hub import HubError, prepare_hub_folder, push_model


def add_subcommand(subparsers) -> None:
    """``aft-hf push FOLDER --repo-id ID [--report R] [--figure F] [--private] [--dry-run --out DIR]``."""
    p = subparsers.add_parser(
        "push", help="upload an exported folder to the Hugging Face Hub, with a model card",
        description="Build the Hub folder (weights, processor, README.md model card with the evaluate report's "
                    "numbers, saliency figure) and upload it. --dry-run builds it under --out without network.")
    p.add_argument("folder", help="an exported folder, e.g. out/final, or a converted one")
    p.add_argument("--repo-id", required=True, help="e.g. me/clip-vit-b16-aft")
    p.add_argument("--report", action=_Once,
                   help="the results for the card (table and model-index): the report.json of `aft-hf evaluate`, or "
                        "the card_<model>.json of `aft-hf benchmark`; one report per card")
    p.add_argument("--allow-unverified-report", action="store_true",
                   help="accept a report of an earlier aft_hf that records no weights hash (by default a report "
                        "must hold a row that measured this folder's weights)")
    p.add_argument("--figure", action=_Once, help="a saliency figure (PNG/JPEG) to embed in the card")
    p.add_argument("--license", help="license id; default: inherited from the base model's card when known")
    p.add_argument("--tag", action="append", default=[], help="an extra tag (repeatable)")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--dry-run", action="store_true", help="only build the folder (needs --out); no network")
    p.add_argument("--out", help="where to build the Hub folder (kept)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is a folder that aft_hf wrote (any other folder is refused)")
    p.set_defaults(func=_cli_push)


class _Once(argparse.Action):
    """An option that may be given once: a second value would silently replace the first."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"argument {option_string}: given twice ({getattr(namespace, self.dest)!r}, {values!r}); "
                         "the card takes one")
        setattr(namespace, self.dest, values)


def _cli_push(args, extra) -> int:
    if args.dry_run:
        if not args.out:
            raise HubError("--dry-run needs --out DIR (where the folder is built)")
        out = prepare_hub_folder(args.folder, args.out, args.repo_id, args.report, args.figure, args.license,
                                 overwrite=args.overwrite, tags=args.tag,
                                 allow_unverified_report=args.allow_unverified_report)
        print(f"built {out} (dry run, nothing uploaded): {', '.join(sorted(p.name for p in out.iterdir()))}")
        return 0
    print(push_model(args.folder, args.repo_id, args.report, args.figure, private=args.private,
                     license=args.license, staging=args.out, overwrite=args.overwrite, tags=args.tag,
                     allow_unverified_report=args.allow_unverified_report))
    return 0
