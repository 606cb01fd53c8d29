"""The ``dlkit`` command line: thin commands that parse, call the Python API, and print.

Output is for people by default; ``--json`` prints exactly one JSON object on stdout, with
progress and logs on stderr. Exit codes: 0 done, 2 bad usage or input, 1 a failure during
the work. ``--debug`` (anywhere on the line) shows tracebacks.

Each command module registers its commands on the group when imported here.
"""

from dlkit.cli import importing, infer, repository, serve, train  # noqa: F401  (registers the commands)
from dlkit.cli.group import cli, main

__all__ = ["cli", "main"]
