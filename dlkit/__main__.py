"""``python -m dlkit`` (and ``torchrun -m dlkit``) runs the CLI."""

from .cli import main

main()
