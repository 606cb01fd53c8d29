"""``python -m dlkit`` (and ``torchrun -m dlkit``) runs the CLI."""

from dlkit.cli.group import main

main()
