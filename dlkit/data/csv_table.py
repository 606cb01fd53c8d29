"""Reading a CSV/TSV file into a table of features and one target column, without guessing silently.

What a spreadsheet or a library writes is read as such: a UTF-8 byte-order mark (Excel's "CSV
UTF-8") is dropped, ``;`` and tab delimiters are sniffed (``csv.Sniffer``), ``.tsv`` is tab
separated, and scikit-learn's bundled files (first line ``150,4,setosa,versicolor,virginica``:
rows, features, class names) are recognised. The target column is ``data.target`` when given,
else a column named like one (target, label, class, y), else the last; the choice is reported.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from dlkit.data.dataset import is_number
from dlkit.errors import InputError

TARGET_NAMES = ("target", "label", "class", "y")
MISSING = ("", "na", "n/a", "nan", "null", "none", "?")
MISSING_POLICIES = ("error", "drop", "mean")


@dataclass
class Table:
    """A CSV file's header and rows; ``class_names`` when the file names its classes (sklearn)."""

    path: Path
    header: list[str]
    rows: list[tuple[int, list[str]]]  # (line number in the file, cells)
    class_names: list[str] | None = None


def read_table(path: Path) -> Table:
    """Read ``path`` (header detected, BOM stripped, delimiter sniffed); rows keep their line numbers."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV file (expected UTF-8)") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" else _sniff(text)
    try:
        rows = [(i + 1, r) for i, r in enumerate(csv.reader(text.splitlines(), delimiter=delimiter))]
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc})") from None
    rows = [(n, r) for n, r in rows if any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{path}: empty CSV file")
    first = [c.strip() for c in rows[0][1]]
    names = _sklearn_counts(first, rows)
    if names is not None:
        width = len(rows[1][1])
        header = [f"feature {i + 1}" for i in range(width - 1)] + ["target"]
        return Table(path, header, rows[1:], names)
    # A header is a first row with a word where the next row has a number (as csv.Sniffer
    # judges it): a header-less file with string labels ("5.1,3.5,setosa") keeps its first row.
    if len(rows) > 1:
        has_header = any(not is_number(a) and is_number(b) for a, b in zip(first, rows[1][1]))
    else:
        has_header = not all(is_number(c) for c in first)
    if has_header:
        return Table(path, first, rows[1:])
    return Table(path, [f"column {i + 1}" for i in range(len(first))], rows)


def _sniff(text: str) -> str:
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:  # one column, or nothing to tell: the standard comma
        return ","


def _sklearn_counts(first: list[str], rows: list) -> list[str] | None:
    """Class names from scikit-learn's count line ``N_ROWS,N_FEATURES,NAME...``, else None."""
    if len(rows) < 2 or len(first) < 3 or not (first[0].isdigit() and first[1].isdigit()):
        return None
    if int(first[0]) != len(rows) - 1 or int(first[1]) != len(rows[1][1]) - 1:
        return None
    return first[2:]


def target_column(table: Table, target) -> int:
    """The index of the target: ``data.target`` (name or index), a target-like name, or the last."""
    header = table.header
    if target is None:
        lowered = [h.lower() for h in header]
        for name in TARGET_NAMES:
            if name in lowered:
                return lowered.index(name)
        return len(header) - 1
    if isinstance(target, int) or str(target).lstrip("-").isdigit():
        t = int(target)
        if not -len(header) <= t < len(header):
            raise InputError(f"{table.path}: data.target={target} is out of range ({len(header)} columns)")
        return t % len(header)
    if target in header:
        return header.index(target)
    raise InputError(f"{table.path}: data.target={target!r} is not a column (columns: {', '.join(header)})")


def features_and_labels(table: Table, t: int, missing: str = "error",
                        chosen: bool = True) -> tuple[list[list[float]], list[str]]:
    """Float features (every column but ``t``) and the target's cells, with ``missing`` cells
    refused (``error``, naming the first), their rows dropped (``drop``) or filled with the column's
    mean (``mean``). ``chosen``: the user named the target (else a word in a feature column is
    probably the real target, and the error says how to pick it)."""
    if missing not in MISSING_POLICIES:
        raise InputError(f"data.missing must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}")
    header, path = table.header, table.path
    feats: list[list[float]] = []
    labels: list[str] = []
    for line, row in table.rows:
        if len(row) != len(header):
            raise InputError(f"{path}:{line}: expected {len(header)} columns, found {len(row)}")
        values: list[float] = []
        for col, cell in enumerate(row):
            if col == t:
                continue
            try:
                values.append(_cell(path, line, col, header[col], cell, missing))
            except InputError as exc:
                if chosen or "not a number" not in str(exc):
                    raise
                raise InputError(f"{exc} (the target was taken to be {header[t]!r}; if {header[col]!r} is the "
                                 f"class, pass --set data.target={header[col]})") from None
        label = row[t].strip()
        if label.lower() in MISSING:
            if missing == "error":
                raise InputError(f"{path}:{line}: the target {header[t]!r} is missing; "
                                 f"fix the row or set data.missing=drop")
            continue  # a row without a target teaches nothing, whatever the policy
        if missing == "drop" and any(math.isnan(v) for v in values):
            continue
        feats.append(values)
        labels.append(label)
    if missing == "mean" and feats:
        _fill_means(feats)
    return feats, labels


def _cell(path, line, col, name, cell, missing) -> float:
    text = cell.strip()
    if text.lower() in MISSING:
        if missing == "error":
            raise InputError(f"{path}:{line}: column {col + 1} ({name!r}) is missing ({text!r}); "
                             f"set data.missing=drop (drop such rows) or data.missing=mean (the column's mean)")
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{path}:{line}: column {col + 1} ({name!r}) is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{path}:{line}: column {col + 1} ({name!r}) is {text!r}")
    return value


def _fill_means(feats: list[list[float]]) -> None:
    for col in range(len(feats[0])):
        known = [r[col] for r in feats if not math.isnan(r[col])]
        mean = sum(known) / len(known) if known else 0.0
        for r in feats:
            if math.isnan(r[col]):
                r[col] = mean


def check_target(path: Path, name: str, labels: list[str]) -> None:
    """Refuse a target that cannot be a class label: mostly unique values, or a class of one."""
    counts: dict[str, int] = {}
    for v in labels:
        counts[v] = counts.get(v, 0) + 1
    if len(labels) >= 10 and len(counts) > len(labels) / 2:
        raise InputError(f"{path}: target column {name!r} has {len(counts)} different values in {len(labels)} "
                         f"rows: it looks like a feature, not a class; name the class column with "
                         f"--set data.target=COLUMN, or predict the numbers with --set task=regression")
    fractional = next((v for v in counts if is_number(v) and not float(v).is_integer()), None)
    if fractional is not None:
        raise InputError(f"{path}: target column {name!r} holds fractional numbers ({fractional}): it looks like "
                         f"a feature, not a class; name the class column with --set data.target=COLUMN, or "
                         f"predict the numbers with --set task=regression")
    single = sorted(k for k, c in counts.items() if c == 1)
    if single:
        raise InputError(f"{path}: class {single[0]!r} of target {name!r} has only one row "
                         f"({len(single)} such class{'es' if len(single) > 1 else ''}); every class needs at "
                         f"least 2 rows: add rows, drop that class, or pick another column with "
                         f"--set data.target=COLUMN")


def target_summary(input_spec: dict, num_classes: int | None) -> str | None:
    """``target: species, 3 classes, 150 rows, 4 features`` (``numbers`` for a regression) for a
    table read from a file, else None."""
    if "target" not in input_spec:
        return None
    what = "numbers" if num_classes is None else f"{num_classes} classes"
    return (f"target: {input_spec['target']}, {what}, {input_spec.get('rows', '?')} rows, "
            f"{input_spec['shape'][0]} features")
