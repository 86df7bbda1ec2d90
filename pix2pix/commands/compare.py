"""``pix2pix compare``: evaluate several generators on the same split, side by side."""

from __future__ import annotations

import argparse

from pix2pix.commands.common import UsageError
from pix2pix.commands.evaluate import add_evaluation_options, evaluation_options, print_evaluations


def register(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "compare", help="evaluate several generators on the same split, side by side"
    )
    parser.add_argument("models", nargs="+", help="run directories, checkpoints or model folders")
    parser.add_argument("--names", default=None, help="comma-separated column names")
    parser.add_argument("--title", default=None, help="report title")
    add_evaluation_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from training.evaluation.evaluate import evaluate_models
    from training.evaluation.report import write_report

    if len(args.models) < 2:
        raise UsageError("compare needs at least two models")
    names = args.names.split(",") if args.names else None
    if names is not None and len(names) != len(args.models):
        raise UsageError(f"--names gives {len(names)} names for {len(args.models)} models")
    evaluations = evaluate_models(
        args.models, args.data, args.split, names=names, **evaluation_options(args)
    )
    print_evaluations(evaluations, write_report(evaluations, args.out, title=args.title))
    return 0
