"""Issue 13, finding 13 (quantize): intermediate files live in the repository's staging area,
where the next run finds and removes what a killed one left; nothing goes to $TMPDIR."""

from __future__ import annotations

import tempfile

from dlkit.store.repository import LOCK
from dlkit.testing import run_cli


def test_quantize_works_in_the_staging_area_and_cleans_a_killed_run(mlp_exported, tmp_path, monkeypatch):
    # $TMPDIR points nowhere: any temporary folder quantize or onnxruntime made there would fail.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    killed = mlp_exported.root / ".staging" / "quantize" / "1-999999999"
    (killed / "pre.quant.abc123").mkdir(parents=True)  # what a killed run left, its lock free
    (killed / "pre.quant.abc123" / "model.onnx").write_bytes(b"\0" * 1024)
    (killed / LOCK).touch()
    out = run_cli("quantize", "mlp-digits", "--method", "dynamic", "--json")
    assert out.json()["model"] == "mlp-digits-int8"
    assert not (mlp_exported.root / ".staging").exists()
    assert not (tmp_path / "no-such-tmpdir").exists()
    assert mlp_exported.names() == ["cnn-digits", "gru-digits", "mlp-digits", "mlp-digits-int8", "rnn-digits"]
