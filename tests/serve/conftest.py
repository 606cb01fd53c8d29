"""Fixtures of the serve tests: one server for the whole session, an offline reference."""

from __future__ import annotations

import pytest
from serve_helpers import MAX_BATCH, MAX_BYTES, MODELS, ServerProcess

from dlkit.store.repository import ModelRepository


@pytest.fixture(scope="session")
def server(exported_repo):
    """Every model, a small batch limit and body limit, no token."""
    srv = ServerProcess(exported_repo, "--max-batch-size", str(MAX_BATCH), "--max-request-bytes", str(MAX_BYTES))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def offline(exported_repo):
    """name -> inputs -> {output: array}, computed by onnxruntime in this process."""
    from dlkit.infer.session import Session

    sessions = {name: Session(ModelRepository(exported_repo).resolve(name).onnx_path, "cpu") for name in MODELS}
    return lambda name, x: sessions[name].run({"input": x})
