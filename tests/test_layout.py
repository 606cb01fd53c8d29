"""The package's shape, checked: layers import only downwards, torch-free layers stay torch-free,
no import circle, and plugins use only the public API that ``dlkit/__init__.py`` declares."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import dlkit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dlkit"
# What each layer may import at module level (dlkit.errors, hookspecs and the root are everyone's).
LAYERS = {
    "store": {"store"},
    "data": {"data", "store"},
    "training": {"training", "data", "store", "registry", "plugins"},
    "export": {"export", "training", "data", "store", "registry", "plugins"},
    "infer": {"infer", "data", "store", "registry", "plugins"},
    "serve": {"serve", "infer", "store"},
}
COMMON = {"errors", "hookspecs", ""}


def modules() -> dict[str, Path]:
    """Every module of the dlkit package: dotted name -> file."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def top_level_imports(path: Path, name: str) -> set[str]:
    """dlkit modules imported when ``path`` is imported (module level, not inside functions or
    ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "dlkit" or target.startswith("dlkit."):
                names = [f"{target}.{a.name}" for a in node.names]
                out |= {n for n in names if n in modules()} or {target}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("dlkit")}
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_layers_import_only_downwards():
    wrong = []
    for name, path in modules().items():
        own = layer(name)
        if own not in LAYERS:
            continue
        for target in top_level_imports(path, name):
            if layer(target) not in LAYERS[own] | COMMON:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = {name: top_level_imports(path, name) - {name} for name, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(trail[trail.index(nxt):] + [node, nxt])
                            if nxt in trail else f"import circle through {node} -> {nxt}")
            if nxt in graph and not state.get(nxt):
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if not state.get(name):
            visit(name, [])


TORCH_FREE = ["dlkit.store", "dlkit.data", "dlkit.infer", "dlkit.serve", "dlkit.cli"]


def test_torch_free_packages_import_no_torch():
    """Every module of the packages the CLI, predict and the server use, imported in a fresh
    interpreter: none pulls torch, onnx or sklearn in."""
    names = [m for m in modules() if any(m == p or m.startswith(p + ".") for p in TORCH_FREE)]
    code = ("import importlib, json, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'sklearn'})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_the_torch_check_can_fail():
    code = "import sys, dlkit.training.loop; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.stdout.strip() == "True"


def plugin_files() -> list[Path]:
    return sorted(p for base in ("plugins", "examples") for p in (ROOT / base).rglob("*.py")
                  if "tests" not in p.relative_to(ROOT).parts)


@pytest.mark.parametrize("path", plugin_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dlkit"):
            if node.module == "dlkit":
                unknown = [a.name for a in node.names if a.name not in dlkit.__all__]
                assert not unknown, f"{path}:{node.lineno} imports {unknown}, not in dlkit.__all__"
            else:
                assert node.module == "dlkit.testing" or not node.module.startswith("dlkit."), \
                    f"{path}:{node.lineno}: from {node.module} import ... (use `from dlkit import ...`)"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert not alias.name.startswith("dlkit.") or alias.name == "dlkit.testing", \
                    f"{path}:{node.lineno}: import {alias.name}"


def test_every_public_name_resolves_to_what_it_declares():
    """Also after every submodule is imported: a subpackage named like a public function
    would shadow it (``from dlkit import train`` returning a module)."""
    for info in pkgutil.walk_packages(dlkit.__path__, "dlkit."):
        if info.name != "dlkit.__main__":
            importlib.import_module(info.name)
    for name in dlkit.__all__:
        value = getattr(dlkit, name)
        target = dlkit._API.get(name)
        if target:
            module, _, attr = target.partition(":")
            assert value is getattr(importlib.import_module(module), attr or name), name
    assert callable(dlkit.train) and not isinstance(dlkit.train, type(dlkit))


def test_py_typed_ships():
    assert (PACKAGE / "py.typed").is_file()
