"""What the verbs share: the usage error that ``main`` prints without a traceback, exit codes."""

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """A command-line mistake; printed without a traceback."""
