"""The ``dlkit`` click group: plugin commands, one-line errors and exit codes, ``main``."""

from __future__ import annotations

import os
import sys

import click

from dlkit import __version__
from dlkit.errors import DlkitError



DEBUG = False
ARGS: list[str] | None = None  # the command line main() ran, for messages that repeat it

class DlkitGroup(click.Group):
    """Adds plugin commands on first look-up, and turns dlkit's errors into one red line and an
    exit code (tracebacks only with --debug)."""

    _plugins_added = False

    def _add_plugin_commands(self, ctx) -> None:
        if DlkitGroup._plugins_added:
            return
        DlkitGroup._plugins_added = True
        from dlkit.plugins import get_plugins

        try:
            get_plugins().add_commands(self)
        except DlkitError as exc:  # DLKIT_STRICT_PLUGINS=1
            if DEBUG:
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)

    def list_commands(self, ctx):
        self._add_plugin_commands(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        core = self.commands.get(name)
        if core is not None and getattr(core, "builtin_plugins_only", False):
            return core  # e.g. serve: it loads the plugins it wants itself
        self._add_plugin_commands(ctx)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DlkitError as exc:
            if DEBUG:
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:  # the disk, the network, permissions: one line, not a traceback
            if DEBUG:
                raise
            if isinstance(exc, BrokenPipeError):  # `dlkit models | head`: the reader left
                ctx.exit(1)
            click.secho(f"error: {describe_os_error(exc)}", fg="red", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            if DEBUG:
                raise
            click.secho("interrupted", fg="red", err=True)
            ctx.exit(130)


def describe_os_error(exc: OSError) -> str:
    """``No space left on device: models/x/1/model.onnx (free some space and run it again)``."""
    import errno

    what = exc.strerror or str(exc) or type(exc).__name__
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    hint = {errno.ENOSPC: "free some space and run it again",
            errno.EROFS: "the file system is read-only: use --repo on a writable one",
            errno.EACCES: "no permission: use --repo on a folder you can write",
            errno.EADDRINUSE: "the port is taken: choose another one"}.get(exc.errno)
    return what + (f": {where}" if where else "") + (f" ({hint})" if hint else "")


@click.group(cls=DlkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlkit")
@click.option("--repo", type=click.Path(file_okay=False), help="Model repository folder for the command "
              "(as the command's own --repo; or $DLKIT_REPO).  [default: models]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (as the command's --json).")
@click.option("--debug", is_flag=True, expose_value=False,
              help="Show tracebacks (anywhere on the line; or $DLKIT_DEBUG=1).")
@click.pass_context
def cli(ctx, repo, as_json):
    """dlkit: train, compress, export and serve neural networks.

    Models live in a repository (./models by default): NAME is the latest version of a model,
    NAME:V a fixed one. Add --json to any command for machine-readable output.
    """
    # --repo here is read by the commands' own --repo (dlkit.cli.options.repo_option).
    if as_json:
        ctx.default_map = _defaults_for(ctx.command, {"as_json": True})


def _defaults_for(group: click.Group, values: dict) -> dict:
    """A click default_map giving ``values`` to every command under ``group`` that takes them."""
    out: dict = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out[name] = _defaults_for(command, values)
        else:
            names = {p.name for p in command.params}
            out[name] = {k: v for k, v in values.items() if k in names}
    return out


def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``--debug`` may stand anywhere on the line."""
    global ARGS, DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    ARGS = list(args)
    if "--debug" in args:
        args.remove("--debug")
        DEBUG = True
    DEBUG = DEBUG or os.environ.get("DLKIT_DEBUG", "") not in ("", "0")
    cli.main(args=args, prog_name="dlkit")


