"""Plugin loading: entry points of the ``dlkit`` group, allowlist, failure isolation.

A plugin that fails to import, implements a hook dlkit does not know, or raises while
registering is reported on stderr with its name and skipped, so the CLI keeps working.
``DLKIT_STRICT_PLUGINS=1`` turns each of those into an error (for plugin developers).
``DLKIT_PLUGINS=a,b`` is an allowlist of third-party plugins (empty: built-ins only);
``DLKIT_DISABLE_PLUGINS=a,b`` blocks any plugin by name, built-ins included.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata

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

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.infos: dict[str, PluginInfo] = {}
        self.strict = os.environ.get("DLKIT_STRICT_PLUGINS", "") not in ("", "0")

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        from dlkit import core_plugin  # the core's own registrations: supervised trainer, data sets

        allow = _env_list("DLKIT_PLUGINS")
        blocked = set(_env_list("DLKIT_DISABLE_PLUGINS") or ())
        seen: dict[int, tuple] = {}
        found = [(ep, *_name_and_version(ep.dist, seen)) for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
        dlkit_version = next((v for _, d, v in found if _is_dlkit(d)), None) or _dist_version("dlkit")
        self._add(core_plugin, PluginInfo("core", "dlkit", dlkit_version, builtin=True))
        # Built-ins first, so a third-party plugin that reuses a built-in's name (of an entry
        # point or of a model) is the one refused, whatever its name sorts as.
        for ep, dist, version in sorted(found, key=lambda f: (not _is_dlkit(f[1]), f[0].name)):
            builtin = _is_dlkit(dist)
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
                module = ep.load()
            except (Exception, SystemExit) as exc:  # a broken plugin must not take the CLI down
                self._fail(info, f"failed to import: {type(exc).__name__}: {exc}")
                continue
            self._add(module, info)
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


def _is_dlkit(dist: str | None) -> bool:
    return dist is not None and dist.lower() == "dlkit"


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


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded once on first use."""
    global _plugins
    if _plugins is None:
        plugins = Plugins()
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
