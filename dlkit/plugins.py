"""Plugin loading: entry points of the ``dlkit`` group, allowlist, failure isolation.

A plugin that fails to import, implements a hook dlkit does not know, or raises while
registering is reported on stderr with its name and skipped, so the CLI keeps working.
``DLKIT_STRICT_PLUGINS=1`` turns each of those into an error (for plugin developers).
``DLKIT_PLUGINS=a,b`` is an allowlist of third-party plugins (empty: built-ins only);
``DLKIT_DISABLE_PLUGINS=a,b`` blocks any plugin by name, built-ins included.

Built-ins are the entry points of the distribution this ``dlkit`` package was installed from
(checked by its files, not by a name another package could also use). Plugins import with
stdout sent to stderr (so ``--json`` stays one object), and an import that takes longer than
``DLKIT_PLUGIN_TIMEOUT`` seconds (default 10) is reported by name and skipped.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import pluggy

from dlkit import hookspecs
from dlkit.errors import PluginError
from dlkit.registry import Registry, make_register

ENTRY_POINT_GROUP = "dlkit"
HOOK_KINDS = {
    "register_models": "model",
    "register_trainers": "trainer",
    "register_compressors": "compressor",
    "register_datasets": "dataset",
    "register_tasks": "task",
}


@dataclass
class PluginInfo:
    """One plugin as ``dlkit plugins`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "registered": self.registered,
            "error": self.error,
        }


class Plugins:
    """The loaded plugins, their registry, and what went wrong with any of them."""

    def __init__(self, builtin_only: bool = False) -> None:
        self.builtin_only = builtin_only  # `dlkit serve`: third-party plugins only when asked
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.infos: dict[str, PluginInfo] = {}
        self.strict = os.environ.get("DLKIT_STRICT_PLUGINS", "") not in ("", "0")

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        from dlkit import core_plugin  # the core's own registrations: supervised trainer, data sets

        allow = [] if self.builtin_only else _env_list("DLKIT_PLUGINS")
        blocked = set(_env_list("DLKIT_DISABLE_PLUGINS") or ())
        seen: dict[int, tuple] = {}
        found = [(ep, *_name_and_version(ep.dist, seen), builtin) for ep, builtin in _entry_points(seen)]
        dlkit_version = next((v for _, _, v, b in found if b), None) or _dist_version("dlkit")
        self._add(core_plugin, PluginInfo("core", "dlkit", dlkit_version, builtin=True))
        timeout = _timeout()
        # Built-ins first, so a third-party plugin that reuses a built-in's name (of an entry
        # point or of a model) is the one refused, whatever its name sorts as.
        for ep, dist, version, builtin in sorted(found, key=lambda f: (not f[3], f[0].name)):
            if ep.name in self.infos:
                if self.infos[ep.name].distribution != dist:
                    clash = PluginInfo(f"{ep.name} ({dist})", dist, version, builtin)
                    self._fail(clash, f"uses the plugin name {ep.name!r}, already taken by "
                                      f"{self.infos[ep.name].distribution or 'another distribution'}")
                continue  # otherwise the same distribution seen twice on sys.path
            if ep.name in blocked or (allow is not None and not builtin and ep.name not in allow):
                continue
            info = PluginInfo(ep.name, dist, version, builtin)
            try:
                module = _import_bounded(ep, timeout)
            except TimeoutError:
                self._fail(info, f"did not finish importing within {timeout:g} s (DLKIT_PLUGIN_TIMEOUT)")
                continue
            except (Exception, SystemExit) as exc:  # a broken plugin must not take the CLI down
                self._fail(info, f"failed to import: {type(exc).__name__}: {exc}")
                continue
            self._add(module, info)
        with contextlib.redirect_stdout(sys.stderr):  # a hook that prints must not corrupt --json
            self._register_everything()

    def _add(self, module, info: PluginInfo) -> None:
        self.infos[info.name] = info
        try:
            self.pm.register(module, name=info.name)
            # A hook implementation whose name matches no hookspec (a typo) would be silently
            # ignored by pluggy; check it now so the author hears about it.
            for hook in self.pm.get_hookcallers(module) or []:
                if hook.spec is None:
                    close = difflib.get_close_matches(hook.name, HOOK_NAMES, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise pluggy.PluginValidationError(module, f"unknown hook {hook.name!r}{hint}")
        except Exception as exc:
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            self._fail(info, f"invalid: {exc}")
            return
        info.hooks = sorted(h.name for h in self.pm.get_hookcallers(module) or [])

    def _register_everything(self) -> None:
        for hook_name, kind in HOOK_KINDS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                info = self.infos[impl.plugin_name]
                if info.error:
                    continue
                try:
                    impl.function(register=make_register(self.registry, kind, impl.plugin_name))
                except (Exception, SystemExit) as exc:  # sys.exit() in a hook must not end dlkit
                    self.registry.remove_plugin(impl.plugin_name)
                    self._fail(info, _hook_failure(hook_name, exc))
        for info in self.infos.values():
            info.registered = self.registry.by_plugin(info.name)

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.error = message
        self.infos.setdefault(info.name, info)
        if self.strict:
            raise PluginError(f"plugin {info.name!r} {message}")
        print(f"dlkit: warning: plugin {info.name!r} {message} (skipped)", file=sys.stderr)

    # -- use ---------------------------------------------------------------------------------
    def add_commands(self, cli) -> None:
        """Let every healthy plugin add its CLI subcommands; none may replace an existing one."""
        owners = {name: "dlkit" for name in cli.commands}
        for impl in self.pm.hook.register_commands.get_hookimpls():
            info = self.infos[impl.plugin_name]
            if info.error:
                continue
            before = dict(cli.commands)
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    impl.function(cli=cli)
                replaced = sorted(n for n, c in before.items() if cli.commands.get(n) is not c)
                if replaced:
                    raise PluginError(f"command {replaced[0]!r} is already provided by {owners[replaced[0]]}")
            except (Exception, SystemExit) as exc:  # drop the plugin whole, as for the other hooks
                cli.commands.clear()
                cli.commands.update(before)
                self.registry.remove_plugin(info.name)
                info.registered = {}
                self._fail(info, _hook_failure("register_commands", exc))
                continue
            added = sorted(set(cli.commands) - set(before))
            owners.update({name: f"plugin {info.name!r}" for name in added})
            if added:
                info.registered["commands"] = added


HOOK_NAMES = [name for name in dir(hookspecs) if name.startswith("register_")]


def _hook_failure(hook_name: str, exc: Exception) -> str:
    if isinstance(exc, PluginError):  # dlkit refused a registration: its message says why
        return f"in {hook_name}: {exc}"
    return f"raised in {hook_name}: {type(exc).__name__}: {exc}"


def _import_bounded(ep, timeout: float):
    """``ep.load()`` with stdout sent to stderr, given up (TimeoutError) after ``timeout`` s.

    The import runs in a daemon thread: a hung one cannot be stopped, but it no longer holds
    the CLI (``--help`` and ``dlkit plugins`` above all) and does not keep the process alive.
    """
    box: dict = {}

    def target() -> None:
        try:
            box["module"] = ep.load()
        except BaseException as exc:  # SystemExit too: re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"dlkit-plugin-{ep.name}", daemon=True)
    with contextlib.redirect_stdout(sys.stderr):  # restored here even if the import hangs
        worker.start()
        worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(ep.name)
    if "error" in box:
        raise box["error"]
    return box["module"]


def _timeout() -> float:
    raw = os.environ.get("DLKIT_PLUGIN_TIMEOUT", "")
    try:
        value = float(raw) if raw else 10.0
    except ValueError:
        value = 10.0
    return value if value > 0 else 10.0


def _entry_points(seen: dict[int, tuple]) -> list[tuple]:
    """(entry point, built-in?) for the ``dlkit`` group.

    Built-ins are read from this package's own distribution directly: importlib.metadata keeps
    one distribution per normalised name, so a stray ``DLKit`` earlier on the path would
    otherwise hide them, and its own entry points would pass for dlkit's.
    """
    own = next((d for d in metadata.distributions(name="dlkit") if _installs_this_package(d)), None)
    builtins = [(ep, True) for ep in (own.entry_points if own else []) if ep.group == ENTRY_POINT_GROUP]
    others = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        name = (_name_and_version(ep.dist, seen)[0] or "").lower().replace("_", "-")
        if own is not None and name == "dlkit" and _installs_this_package(ep.dist):
            continue  # the same distribution, already listed
        others.append((ep, False))
    return builtins + others


def _installs_this_package(dist) -> bool:
    """The dist's recorded files (or its editable source folder) hold this ``dlkit/__init__.py``."""
    import dlkit

    own = Path(dlkit.__file__).resolve()
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        direct = {}
    if isinstance(direct, dict) and direct.get("dir_info", {}).get("editable"):
        source = Path(unquote(urlparse(str(direct.get("url", ""))).path))
        return (source / "dlkit" / "__init__.py").resolve() == own
    for file in dist.files or []:
        if file.parts[-2:] == ("dlkit", "__init__.py"):
            return Path(str(dist.locate_file(file))).resolve() == own
    return False


def _name_and_version(dist, seen: dict[int, tuple]) -> tuple[str | None, str | None]:
    """A distribution's name and version from one read of its metadata (each ``dist.name`` or
    ``dist.version`` parses the METADATA file again: that cost is paid on every command).
    ``seen`` maps ``id(dist)`` to ``(dist, name, version)`` for the entry points of one scan."""
    if dist is None:
        return None, None
    if id(dist) not in seen:
        meta = dist.metadata
        seen[id(dist)] = (dist, meta["Name"], meta["Version"])
    return seen[id(dist)][1:]


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


_plugins: Plugins | None = None


def get_plugins(builtin_only: bool = False) -> Plugins:
    """The process-wide plugins, loaded once on first use.

    ``builtin_only=True`` (what ``dlkit serve`` asks for) loads only dlkit's own plugins;
    a later call without it loads the third-party ones too.
    """
    global _plugins
    if _plugins is None or (_plugins.builtin_only and not builtin_only):
        plugins = Plugins(builtin_only)
        plugins.load()
        _plugins = plugins
    return _plugins


def get_registry() -> Registry:
    """The registry of everything the loaded plugins registered."""
    return get_plugins().registry


def reset() -> None:
    """Forget loaded plugins (tests install packages and load again)."""
    global _plugins
    _plugins = None
    importlib.invalidate_caches()
