"""Issue 13, finding 11: a plugin cannot corrupt --json output, hang the CLI, pass for a
built-in, or run inside `dlkit serve` unless asked. Real dlkit processes, real distributions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dlkit.testing import install_throwaway

CHATTY = '''print("hello from chatty at import")
from dlkit import hookimpl


@hookimpl
def register_models(register):
    print("hello from chatty's hook")
'''
HANGS = '''import threading
threading.Event().wait()  # never returns
'''
MARKS = '''import os
from pathlib import Path
Path(os.environ["MARKER"]).write_text("imported")
'''
IMPOSTOR = '''from dlkit import hookimpl


@hookimpl
def register_models(register):
    register("evil", print, input_kinds={"tabular"})
'''


def dlkit_proc(site: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DLKIT_")}
    # cwd: the site's folder, so a dlkit.egg-info in the checkout does not shadow what is tested
    return subprocess.run([sys.executable, "-m", "dlkit", *args], capture_output=True, text=True, cwd=site,
                          timeout=timeout, env={**clean, "PYTHONPATH": str(site), **env})


def test_plugin_output_goes_to_stderr(tmp_path):
    site = install_throwaway(tmp_path / "site", "chatty", CHATTY)
    out = dlkit_proc(site, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    assert "chatty" in {p["name"] for p in json.loads(out.stdout)["plugins"]}
    assert "hello from chatty at import" in out.stderr and "hello from chatty's hook" in out.stderr


def test_a_hanging_plugin_is_named_and_skipped(tmp_path):
    site = install_throwaway(tmp_path / "site", "hangs", HANGS)
    for args in (["--help"], ["plugins", "--json"]):
        out = dlkit_proc(site, *args, DLKIT_PLUGIN_TIMEOUT="2")
        assert out.returncode == 0, out.stderr
        assert "plugin 'hangs' did not finish importing within 2 s" in out.stderr
    listed = {p["name"]: p for p in json.loads(out.stdout)["plugins"]}
    assert listed["hangs"]["error"] and listed["mlp"]["builtin"]


def test_a_distribution_named_like_dlkit_is_not_a_builtin(tmp_path):
    site = tmp_path / "site"
    install_throwaway(site, "evil_mod", IMPOSTOR)
    (site / "dlkit_throwaway_evil_mod-0.1.dist-info").rename(site / "DLKit-9.9.dist-info")
    (site / "DLKit-9.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: DLKit\nVersion: 9.9\n")
    only_builtins = dlkit_proc(site, "plugins", "--json", DLKIT_PLUGINS="")
    assert only_builtins.returncode == 0, only_builtins.stderr
    names = {p["name"] for p in json.loads(only_builtins.stdout)["plugins"]}
    assert "evil_mod" not in names and "mlp" in names
    everything = {p["name"]: p for p in json.loads(dlkit_proc(site, "plugins", "--json").stdout)["plugins"]}
    assert everything["evil_mod"]["builtin"] is False
    assert everything["mlp"]["builtin"] is True and everything["core"]["version"] != "9.9"


def _serve_imports_plugin(site: Path, tmp_path: Path, *flags: str) -> bool:
    """Whether `dlkit serve` imported the plugin (the repository is empty: serve stops with
    exit 2 after choosing its plugins, which is all this needs)."""
    marker = tmp_path / "marker"
    marker.unlink(missing_ok=True)
    out = dlkit_proc(site, "serve", "--port", "0", "--repo", str(tmp_path / "models"), *flags, MARKER=str(marker))
    assert out.returncode == 2 and "no model" in out.stderr, out.stderr
    return marker.exists()


def test_serve_loads_only_builtins_unless_asked(tmp_path):
    site = install_throwaway(tmp_path / "site", "marks", MARKS)
    (tmp_path / "models").mkdir()
    assert not _serve_imports_plugin(site, tmp_path)
    assert _serve_imports_plugin(site, tmp_path, "--third-party-plugins")
