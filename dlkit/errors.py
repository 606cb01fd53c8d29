"""The errors dlkit raises on purpose; the CLI turns them into one line and an exit code."""

from __future__ import annotations


class DlkitError(Exception):
    """A failure during the work (exit code 1): the message is meant for the user."""

    exit_code = 1


class InputError(DlkitError):
    """Bad usage or bad input (exit code 2): names the file, field, shape or value at fault."""

    exit_code = 2


class PluginError(DlkitError):
    """A plugin failed to load or to register (an error only under DLKIT_STRICT_PLUGINS=1)."""

    exit_code = 1


def first_line(exc: BaseException, typed: bool = False, limit: int = 200) -> str:
    """An exception's first line, at most ``limit`` characters, for a one-line error message;
    ``typed`` puts its type in front (``ValueError: ...``), for exceptions from other libraries
    whose messages alone do not say what failed."""
    lines = str(exc).strip().splitlines()
    text = lines[0][:limit] if lines else ""
    return f"{type(exc).__name__}: {text}" if typed else text or type(exc).__name__
