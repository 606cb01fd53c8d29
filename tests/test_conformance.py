"""Every classifier the registry holds, on every kind of input it declares (built-in or installed
by a third party, tested the moment it registers): it builds, learns, and survives a safetensors
round trip into a fresh build with identical outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlkit.plugins import get_registry
from dlkit.store.recipe import check_options
from dlkit.testing import DATA_FOR_KIND, check_build, check_train_step, check_weights_round_trip
from dlkit.training.build import build_model


def cases() -> list:
    out = []
    for spec in get_registry().all("model"):
        if spec.task != "classification":
            continue
        for kind in sorted(spec.input_kinds & set(DATA_FOR_KIND)):
            out.append(pytest.param(spec.name, DATA_FOR_KIND[kind], id=f"{spec.name}-{kind}"))
    return out


def test_the_builtin_classifiers_are_covered():
    ids = {p.id for p in cases()}
    assert {"mlp-tabular", "mlp-image", "cnn-image", "rnn-sequence", "rnn-image"} <= ids


@pytest.mark.parametrize("arch, data", cases())
def test_classifier_conforms(arch, data, tmp_path):
    spec = get_registry().model(arch)
    module, ds = check_build(arch, data)  # builds with its defaults; a forward pass gives (N, classes) logits

    # A few optimizer steps on one batch lower its loss: the parameters are wired to the output.
    x = torch.from_numpy(ds.x_train[:32])
    y = torch.from_numpy(ds.y_train[:32]).long()
    torch.manual_seed(0)
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"{arch}: fitting one batch did not lower its loss: {losses}"

    check_train_step(module, ds)  # every parameter gets a finite gradient; a step changes the outputs

    hparams = check_options("model", {}, spec.defaults)
    check_weights_round_trip(module, lambda: build_model(spec, hparams, ds.input_spec, ds.num_classes), tmp_path)
    from dlkit.store.weights import load_weights

    torch.manual_seed(123)
    fresh = build_model(spec, hparams, ds.input_spec, ds.num_classes)
    load_weights(fresh, tmp_path / "round-trip.safetensors")
    module.eval()
    fresh.eval()
    with torch.inference_mode():
        batch = torch.from_numpy(ds.x_test[:16])
        assert torch.equal(module(batch), fresh(batch)), f"{arch}: outputs differ after a save/load round trip"
