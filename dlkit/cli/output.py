"""Printing: one JSON object for --json, rich tables for people."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click


def emit(obj: Any, as_json: bool, human: Callable[[Any], None] | None = None) -> None:
    """Print ``obj`` as JSON, or through ``human`` for people."""
    if as_json or human is None:
        click.echo(json.dumps(obj, indent=None if as_json else 2, default=str))
    else:
        human(obj)


def console():
    from rich.console import Console

    return Console()


def table(title: str | None, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t


def fmt_metric(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


