"""Shared fixtures: an empty repository per test, and small trained models built once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Keep torch from oversubscribing the 2 CI cores when tests run beside a server thread.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from trained_models import FAST, TRAINED  # noqa: E402  (after the thread setting)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """An empty model repository, also set as $DLKIT_REPO."""
    from dlkit.store.repository import ModelRepository

    root = tmp_path / "models"
    monkeypatch.setenv("DLKIT_REPO", str(root))
    return ModelRepository(root)


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory) -> Path:
    """A repository holding each model of TRAINED, trained for 2 epochs on digits (read-only)."""
    from dlkit.store.recipe import Recipe
    from dlkit.store.repository import ModelRepository
    from dlkit.training.run import train

    root = tmp_path_factory.mktemp("trained") / "models"
    repo = ModelRepository(root)
    for name, (arch, hparams) in TRAINED.items():
        train(Recipe(arch=arch, name=name, model=dict(hparams), train=dict(FAST)), repo, quiet=True)
    return root


def writable_copy(source: Path, tmp_path: Path, monkeypatch):
    """A copy of a session repository that one test may change, set as $DLKIT_REPO."""
    from dlkit.store.repository import ModelRepository

    root = tmp_path / "models"
    shutil.copytree(source, root)
    monkeypatch.setenv("DLKIT_REPO", str(root))
    return ModelRepository(root)


def exported_copy(trained_repo: Path, tmp_path_factory, names: list[str] | None) -> Path:
    """The trained repository with ``names`` (default: every model) exported to model.onnx."""
    from dlkit.export.onnx import export_onnx
    from dlkit.store.repository import ModelRepository

    root = tmp_path_factory.mktemp("exported") / "models"
    shutil.copytree(trained_repo, root)
    repo = ModelRepository(root)
    for name in names or repo.names():
        export_onnx(repo.resolve(name), exporter="torchscript")  # the fast tracer; dynamo is tested in test_export
    return root


@pytest.fixture
def trained(trained_repo, tmp_path, monkeypatch):
    """A writable copy of the trained repository, set as $DLKIT_REPO."""
    return writable_copy(trained_repo, tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def exported_repo(trained_repo, tmp_path_factory) -> Path:
    """The trained repository with every model exported (read-only)."""
    return exported_copy(trained_repo, tmp_path_factory, None)


@pytest.fixture
def exported(exported_repo, tmp_path, monkeypatch):
    """A writable copy of ``exported_repo``, set as $DLKIT_REPO."""
    return writable_copy(exported_repo, tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def mlp_exported_repo(trained_repo, tmp_path_factory) -> Path:
    """The trained repository with only mlp-digits exported (the others say: export first)."""
    return exported_copy(trained_repo, tmp_path_factory, ["mlp-digits"])


@pytest.fixture
def mlp_exported(mlp_exported_repo, tmp_path, monkeypatch):
    """A writable copy of ``mlp_exported_repo``, set as $DLKIT_REPO."""
    return writable_copy(mlp_exported_repo, tmp_path, monkeypatch)
