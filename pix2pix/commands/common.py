"""What the verbs share: the usage error that ``main`` prints without a traceback, exit codes,
and hidden aliases for the other spellings of an option."""

import argparse

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """A command-line mistake; printed without a traceback."""


def add_hidden_alias(parser: argparse.ArgumentParser, flag: str, dest: str, **options) -> None:
    """Accept ``flag`` as another spelling of the option stored in ``dest``, unlisted in the
    help; the option's own default stands when neither is given."""
    parser.add_argument(
        flag, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **options
    )
