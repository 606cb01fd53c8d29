"""The plugin author's contract stays documented and tested: every hook in dlkit/hookspecs.py has
a section in docs/plugins.md and a ``test_hook_<name>`` test somewhere in tests/."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from dlkit import hookspecs

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
HOOKS = sorted(name for name, obj in vars(hookspecs).items() if hasattr(obj, "dlkit_spec"))


def sections() -> dict[str, str]:
    """``## heading`` -> the text under it, from the plugin guide."""
    parts = re.split(r"^## +(.+?) *$", GUIDE.read_text(), flags=re.M)
    return {title.strip("` "): body for title, body in zip(parts[1::2], parts[2::2])}


def test_hookspecs_are_found():
    assert {"register_models", "register_trainers", "register_compressors", "register_datasets",
            "register_commands"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_section_in_the_guide(hook):
    body = sections().get(hook)
    assert body is not None, f"docs/plugins.md has no '## {hook}' section"
    signature = f"{hook}{inspect.signature(getattr(hookspecs, hook))}"
    assert signature in body, f"the '## {hook}' section does not show the signature {signature}"


def test_guide_documents_no_hook_that_does_not_exist():
    documented = {title for title in sections() if title.startswith("register_")}
    assert documented <= set(HOOKS), f"docs/plugins.md documents unknown hooks: {sorted(documented - set(HOOKS))}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    wanted = f"test_hook_{hook}"
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef) and node.name == wanted:
                return
    pytest.fail(f"no test function named {wanted} in tests/")


PROTOCOLS = {"register_models": ("RegisterModel", "ModelSpec"), "register_trainers": ("RegisterTrainer", "TrainerSpec"),
             "register_compressors": ("RegisterCompressor", "CompressorSpec"),
             "register_datasets": ("RegisterDataset", "DatasetSpec"), "register_tasks": ("RegisterTask", "TaskSpec")}


@pytest.mark.parametrize("hook", sorted(PROTOCOLS))
def test_register_protocol_matches_its_spec_and_the_guide(hook):
    """Each typed register callback takes exactly the spec dataclass's fields (name and the
    callable first, the rest keyword-only), and the guide's table documents every one."""
    import dataclasses

    from dlkit import registry

    proto, spec = PROTOCOLS[hook]
    params = list(inspect.signature(getattr(hookspecs, proto).__call__).parameters.values())[1:]
    fields = [f.name for f in dataclasses.fields(getattr(registry, spec)) if f.name not in ("plugin", "tasks")]
    assert [p.name for p in params] == fields[:2] + [p.name for p in params[2:]], hook
    assert sorted(p.name for p in params) == sorted(fields), f"{proto} and {spec} disagree"
    assert all(p.kind is p.KEYWORD_ONLY for p in params[2:]), f"{proto}: options must be keyword-only"
    body = sections()[hook]
    missing = [p.name for p in params if f"| `{p.name}` |" not in body]
    assert not missing, f"docs/plugins.md '## {hook}' documents no {missing}"
