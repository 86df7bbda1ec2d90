"""The ``pix2pix`` command line: its entry point, which dispatches to one module per verb.

Each verb (``pix2pix.commands``) registers its own arguments beside its handler and imports
its heavy modules when it runs, so ``pix2pix --help`` is instant and training never pays for
web imports.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pix2pix.commands import COMMANDS
from pix2pix.commands.common import EXIT_FAILURE, EXIT_USAGE, UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pix2pix", description="Paired image-to-image translation (pix2pix)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "allows_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from model.errors import CheckpointError, InputError, SpecError
    from training.config import ConfigError
    from training.errors import DataError, TrainingError

    expected = (
        UsageError,
        ConfigError,
        DataError,
        CheckpointError,
        SpecError,
        InputError,
        TrainingError,
    )
    try:
        return args.handler(args, extra)
    except expected as error:
        print(f"pix2pix {args.verb}: error: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, UsageError | ConfigError) else EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
