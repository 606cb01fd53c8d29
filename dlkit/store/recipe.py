"""Recipes: what to train, read from a TOML file and overridden from the command line.

```toml
arch = "cnn"
name = "cnn-digits"
seed = 0
task = "classification"  # optional: the architecture's default task, or inferred from the data
[data]
source = "digits"
[model]          # the architecture's hyper-parameters
channels = [32, 64]
[train]          # the trainer's options
epochs = 30
```
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlkit.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = ("model", "train", "data")
MAX_SEED = 2**32 - 1  # what every generator dlkit seeds accepts (numpy's legacy ones stop here)


@dataclass
class Recipe:
    """Everything one training run needs to be repeated."""

    arch: str
    name: str | None = None
    seed: int = 0
    data: dict[str, Any] = field(default_factory=lambda: {"source": "digits"})
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    task: str | None = None  # None: the architecture's default, or what the data's targets are

    def check(self, where: str = "recipe") -> "Recipe":
        """Refuse values no run can use (InputError naming the field); returns the recipe."""
        if self.name is not None and not isinstance(self.name, str):
            raise InputError(f"{where}: name must be a string, got {self.name!r}")
        check_seed(self.seed, f"{where}: seed")
        if "seed" in self.data:
            check_seed(self.data["seed"], f"{where}: data.seed")
        return self

    def as_dict(self) -> dict:
        return {"arch": self.arch, "name": self.name, "seed": self.seed, "task": self.task,
                "data": self.data, "model": self.model, "train": self.train}


def read_recipe(path: str | Path) -> Recipe:
    """Parse a recipe file; unknown top-level keys and bad TOML name the file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: recipe file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: invalid TOML ({exc})") from None
    except RecursionError:
        raise InputError(f"{path}: invalid TOML (nested too deeply)") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise InputError(f"{path}: not a readable recipe ({str(exc)[:120]})") from None
    allowed = {"arch", "name", "seed", "task", *SECTIONS}
    unknown = set(doc) - allowed
    if unknown:
        raise InputError(f"{path}: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(allowed))})")
    if not isinstance(doc.get("arch"), str):
        raise InputError(f"{path}: 'arch' must name an architecture")
    data = doc.get("data", {"source": "digits"})
    if isinstance(data, str):
        data = {"source": data}
    for section in SECTIONS:
        value = data if section == "data" else doc.get(section, {})
        if not isinstance(value, dict):
            raise InputError(f"{path}: [{section}] must be a table")
    seed = doc.get("seed", 0)
    if not isinstance(seed, int):
        raise InputError(f"{path}: seed must be an integer, got {seed!r}")
    task = doc.get("task")
    if task is not None and not isinstance(task, str):
        raise InputError(f"{path}: task must name a task, got {task!r}")
    return Recipe(arch=doc["arch"], name=doc.get("name"), seed=seed, data=dict(data),
                  model=dict(doc.get("model", {})), train=dict(doc.get("train", {})), task=task).check(str(path))


def check_seed(value: Any, field: str) -> int:
    """A seed: an integer from 0 to 2**32 - 1."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        shown = value if not isinstance(value, int) or abs(value) < 10**30 else f"{str(value)[:12]}..."
        raise InputError(f"{field} must be an integer from 0 to {MAX_SEED}, got {shown!r}")
    return value


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``3``, ``0.1``, ``true``, ``[64, 32]``, ``"x"``), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise InputError(f"--set value {text[:40]!r}...: nested too deeply") from None


def apply_sets(recipe: Recipe, sets: list[str], model_keys: set[str], train_keys: set[str]) -> None:
    """Apply ``--set KEY=VALUE`` items; a bare KEY means a model hyper-parameter or train option
    (``task`` is the recipe's task)."""
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected KEY=VALUE")
        if key == "task":
            recipe.task = raw.strip().strip("'\"")
            continue
        section, dot, sub = key.partition(".")
        if not dot:
            sub = key
            if key in model_keys:
                section = "model"
            elif key in train_keys:
                section = "train"
            else:
                raise InputError(
                    f"--set {key}: unknown key; model keys: {', '.join(sorted(model_keys)) or 'none'}; "
                    f"train keys: {', '.join(sorted(train_keys))}; or use data.KEY"
                )
        if section not in SECTIONS or not sub:
            raise InputError(f"--set {key}: the section must be one of model., train., data.")
        getattr(recipe, section)[sub] = parse_value(raw.strip())


def check_options(section: str, values: dict, defaults: dict) -> dict:
    """Validate option names and types against ``defaults``; return the merged options."""
    out = dict(defaults)
    for key, value in values.items():
        if key not in defaults:
            raise InputError(f"unknown option {section}.{key}; known: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if default is not None and not _same_type(value, default):
            raise InputError(
                f"{section}.{key} must be {type(default).__name__}, got {value!r}"
            )
        out[key] = float(value) if isinstance(default, float) else value
    return out


def _same_type(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))
