"""What plugins registered: models, trainers, compressors, data sets and tasks, by name."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from dlkit.errors import InputError, PluginError

# Input kinds are open: an architecture declares the kinds it accepts, a data set the kind it
# produces, and the core only matches the two (a plugin may add "text" or "audio").
KIND_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture."""

    name: str
    build: Callable[..., Any]
    input_kinds: frozenset
    defaults: dict = field(default_factory=dict)
    trainer: str = "supervised"
    train_defaults: dict = field(default_factory=dict)  # this architecture's own values of trainer options
    task: str = "classification"  # the default task; `--set task=...` picks another of `tasks`
    tasks: tuple = ("classification",)
    export: Callable[..., Any] | None = None
    description: str = ""
    plugin: str = ""

    def train_options(self, trainer: TrainerSpec) -> dict:
        """The trainer's option defaults with this architecture's ``train_defaults`` over them: what
        ``dlkit train ARCH`` uses for every option the user does not set."""
        unknown = sorted(set(self.train_defaults) - set(trainer.defaults))
        if unknown:
            raise PluginError(f"plugin {self.plugin!r}: model {self.name!r} sets train_defaults "
                              f"{', '.join(unknown)} that trainer {trainer.name!r} does not have")
        return {**trainer.defaults, **self.train_defaults}


@dataclass(frozen=True)
class TrainerSpec:
    """A registered trainer."""

    name: str
    fit: Callable[..., Any]
    defaults: dict = field(default_factory=dict)
    distributed: bool = False  # runs data-parallel under torchrun (else refused with --nproc)
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class CompressorSpec:
    """A registered compressor."""

    name: str
    compress: Callable[..., Any]
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set or file loader."""

    name: str
    load: Callable[..., Any]
    suffixes: tuple = ()
    directory: bool = False
    kind: str | None = None
    description: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: what a model's outputs mean and how they are trained, scored, exported,
    printed and checked after compression. See hookspecs.register_tasks for each field."""

    name: str
    metrics: Callable[..., Any]
    output: str = "output"
    loss: Callable[..., Any] | None = None
    target_dtype: str = "float32"
    score: str = "loss"
    higher_is_better: bool = False
    batch_score: Callable[..., Any] | None = None
    export: Callable[..., Any] | None = None
    describe: Callable[..., Any] | None = None
    quality: Callable[..., Any] | None = None
    scores: tuple[str, ...] = ()
    description: str = ""
    plugin: str = ""


KINDS = {
    "model": ModelSpec,
    "trainer": TrainerSpec,
    "compressor": CompressorSpec,
    "dataset": DatasetSpec,
    "task": TaskSpec,
}
FIRST_FIELD = {"model": "build", "trainer": "fit", "compressor": "compress", "dataset": "load", "task": "metrics"}


class Registry:
    """Holds every registration; duplicate names fail loudly, naming both plugins."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, spec: Any) -> None:
        """Add one registration; a name taken by another plugin is a PluginError."""
        items = self._items[kind]
        if not spec.name or not isinstance(spec.name, str):
            raise PluginError(f"plugin {spec.plugin!r} registered a {kind} with no name")
        if spec.name in items:
            first = items[spec.name].plugin
            raise PluginError(
                f"{kind} {spec.name!r} is registered by both plugin {first!r} and plugin {spec.plugin!r}"
            )
        items[spec.name] = spec

    def remove_plugin(self, plugin: str) -> None:
        """Drop everything one plugin registered (used when its hook fails half-way)."""
        for items in self._items.values():
            for name in [n for n, s in items.items() if s.plugin == plugin]:
                del items[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[kind])

    def all(self, kind: str) -> list[Any]:
        return [self._items[kind][n] for n in self.names(kind)]

    def by_plugin(self, plugin: str) -> dict[str, list[str]]:
        """What one plugin registered: ``{"models": [...], ...}`` for the non-empty kinds."""
        out = {}
        for kind, items in self._items.items():
            names = sorted(n for n, s in items.items() if s.plugin == plugin)
            if names:
                out[kind + "s"] = names
        return out

    def get(self, kind: str, name: str) -> Any:
        """Look a name up; an unknown one is an InputError that lists close matches."""
        items = self._items[kind]
        if name in items:
            return items[name]
        known = ", ".join(sorted(items)) or "none"
        close = difflib.get_close_matches(name, list(items), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"unknown {kind} {name!r}{hint}; registered: {known}")

    # Convenience accessors, named for what they return.
    def model(self, name: str) -> ModelSpec:
        return self.get("model", name)

    def trainer(self, name: str) -> TrainerSpec:
        return self.get("trainer", name)

    def compressor(self, name: str) -> CompressorSpec:
        return self.get("compressor", name)

    def dataset(self, name: str) -> DatasetSpec:
        return self.get("dataset", name)

    def task(self, name: str) -> TaskSpec:
        return self.get("task", name)

    def task_of(self, meta: dict) -> TaskSpec | None:
        """The task a stored model's meta.json names (``classification`` when it names none,
        as versions written before tasks were open did); None for ``"task": null``."""
        name = meta.get("task", "classification")
        return None if name is None else self.task(str(name))


def make_register(registry: Registry, kind: str, plugin: str) -> Callable[..., None]:
    """The ``register`` callback one plugin's hook receives for one kind of thing."""
    spec_type = KINDS[kind]

    def register(name: str, func: Callable[..., Any], **options: Any) -> None:
        if not callable(func):
            raise PluginError(f"plugin {plugin!r}: {kind} {name!r} must be registered with a callable")
        first_field = FIRST_FIELD[kind]
        try:
            spec = spec_type(name=name, plugin=plugin, **{first_field: func}, **_normalise(kind, options))
        except TypeError as exc:
            raise PluginError(f"plugin {plugin!r}: bad registration of {kind} {name!r}: {exc}") from exc
        registry.add(kind, spec)

    register.__name__ = f"register_{kind}"
    return register


def _normalise(kind: str, options: dict) -> dict:
    """Validate the options whose values dlkit relies on later."""
    options = dict(options)
    if kind == "model":
        kinds = frozenset(options.get("input_kinds") or ())
        if not kinds or not all(isinstance(k, str) and KIND_RE.fullmatch(k) for k in kinds):
            raise TypeError("input_kinds must be a non-empty set of kind names (lower-case words)")
        options["input_kinds"] = kinds
        tasks = options.get("task", "classification")
        tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        if not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise TypeError("task must be a task name or a list of them")
        options["task"] = tasks[0]
        options["tasks"] = tasks
        options["defaults"] = dict(options.get("defaults") or {})
        options["train_defaults"] = dict(options.get("train_defaults") or {})
    if kind == "trainer":
        options["defaults"] = dict(options.get("defaults") or {})
    if kind == "dataset":
        options["suffixes"] = tuple(s.lower() for s in options.get("suffixes", ()))
        if options.get("kind") is not None and not KIND_RE.fullmatch(str(options["kind"])):
            raise TypeError("kind must be a kind name (a lower-case word)")
    if kind == "task":
        if options.get("target_dtype", "float32") not in ("int64", "float32"):
            raise TypeError("target_dtype must be int64 or float32")
        for key in ("loss", "batch_score", "export", "describe", "quality"):
            if options.get(key) is not None and not callable(options[key]):
                raise TypeError(f"{key} must be callable")
    return options
