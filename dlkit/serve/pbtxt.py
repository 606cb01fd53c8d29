"""What the server reads from a model's own config.pbtxt (Triton's protobuf text format).

Only the fields dlkit acts on are read, with a small scanner rather than Triton's schema (which
would mean shipping model_config.proto): a field's value is found by balanced brackets, comments
are dropped first.

Instances (``--instances``, else ``instance_group``): a repeated field, written
``instance_group [ { count: 2, kind: KIND_CPU }, ... ]`` or ``instance_group { count: 2 }`` once
per group. Each group
gives ``count`` instances (1 when unset, as in Triton); the groups add up. ``kind`` and ``gpus``
are read but not acted on: every instance uses the server's ``--provider``. The file is the
model's own (``<repo>/<name>/config.pbtxt``), never a path from a client.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError

MAX_INSTANCES = 64
_FIELD = re.compile(r"\binstance_group\s*:?\s*([\[{])")
_COUNT = re.compile(r"\bcount\s*:\s*([^\s,}]+)")
_COMMENT = re.compile(r"#[^\n]*")


def configured_instances(config: Path) -> int | None:
    """The instance count ``config`` (a config.pbtxt) asks for, or None without ``instance_group``.

    A count that is not an integer from 1 to MAX_INSTANCES, or an unbalanced group, is an
    InputError naming the file and the value.
    """
    try:
        text = _COMMENT.sub("", config.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"{config}: cannot be read ({exc.strerror or exc})") from None
    groups = []
    for match in _FIELD.finditer(text):
        groups.extend(_groups(config, text, match.start(1)))
    if not groups:
        return None
    total = sum(_count(config, group) for group in groups)
    if total > MAX_INSTANCES:
        raise InputError(f"{config}: instance_group asks for {total} instances, at most {MAX_INSTANCES}")
    return total


def _groups(config: Path, text: str, start: int) -> list[str]:
    """The ``{...}`` bodies of the instance_group field whose value opens at ``start``."""
    body = _balanced(config, text, start)
    if text[start] == "{":
        return [body]
    groups, i = [], 0
    while (i := body.find("{", i)) >= 0:
        group = _balanced(config, body, i)
        groups.append(group)
        i += len(group) + 2
    return groups


def _balanced(config: Path, text: str, start: int) -> str:
    """What lies between the bracket at ``start`` and its match."""
    close = {"[": "]", "{": "}"}[text[start]]
    depth = 0
    for i in range(start, len(text)):
        if text[i] == text[start]:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    raise InputError(f"{config}: instance_group: unbalanced {text[start]!r}")


def _count(config: Path, group: str) -> int:
    match = _COUNT.search(group)
    if match is None:
        return 1
    value = match.group(1)
    if not re.fullmatch(r"[0-9]{1,3}", value) or not 1 <= int(value) <= MAX_INSTANCES:
        raise InputError(f"{config}: instance_group count must be an integer from 1 to {MAX_INSTANCES}, "
                         f"received {value[:40]!r}")
    return int(value)


_NAME = re.compile(r'\bname\s*:\s*"([^"]*)"')
_LABEL_FILE = re.compile(r'\blabel_filename\s*:\s*"([^"]*)"')


def label_files(config: Path) -> dict[str, str]:
    """Output name -> its ``label_filename`` in ``config`` (a config.pbtxt); {} without any.

    A label file must be a plain name in the model's folder (Triton resolves it there too): a
    path is an InputError, so the server reads nothing outside the repository.
    """
    try:
        text = _COMMENT.sub("", config.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InputError(f"{config}: cannot be read ({exc.strerror or exc})") from None
    found = {}
    for match in re.finditer(r"\boutput\s*:?\s*([\[{])", text):
        for block in _groups(config, text, match.start(1)):
            name, label = _NAME.search(block), _LABEL_FILE.search(block)
            if name and label:
                filename = label.group(1)
                if not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", filename) or filename in (".", ".."):
                    raise InputError(f"{config}: output {name.group(1)!r}: label_filename must be a file name in "
                                     f"the model's folder, received {filename[:80]!r}")
                found[name.group(1)] = filename
    return found
