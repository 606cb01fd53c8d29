"""Channels-last for convolutional models: used where it is faster on this device, measured once.

Convolutions on NHWC ("channels last") tensors are faster on many CPUs and GPUs, slower on some
shapes. ``train.channels_last`` forces it on or off; unset, dlkit times a few training steps of the
model in both layouts the first time it meets an architecture, input shape, batch size and device,
and records the answer in the repository's ``.cache/channels_last.json``: later runs (and a
``--resume``) take the same decision without timing again, so a run does not change layout with
the machine's noise.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

STEPS = 3  # timed training steps per layout, after one warm-up step


def has_conv(model: torch.nn.Module) -> bool:
    return any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in model.modules())


def choose_channels_last(model: torch.nn.Module, run: Any, device: str, setting: bool | None) -> bool:
    """Whether to train ``model`` channels-last: ``setting`` if given, else the recorded or measured answer."""
    x = run.data.x_train
    if len(getattr(x, "shape", ())) != 4 or not has_conv(model):
        return False
    if setting is not None:
        return bool(setting)
    batch = min(int(run.config["batch_size"]), len(x))
    key = f"{run.spec.name}|{list(x.shape[1:])}|{batch}|{device}|{torch.__version__}"
    cache = _cache_file(run)
    known = _read(cache)
    if key not in known:
        # Timing runs dropout: keep it off the run's random stream, so a run that measured and one
        # that read the answer train bit-identically.
        devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            known[key] = _measure(model, torch.as_tensor(x[:batch], dtype=torch.float32).to(device))
        _write(cache, known)
    return bool(known[key]["channels_last"])


def _measure(model: torch.nn.Module, xb: torch.Tensor) -> dict:
    """Seconds per training step (forward, backward) in each layout; the model is left as it was."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    times = {}
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        inp = xb.contiguous(memory_format=fmt)
        best = float("inf")
        for step in range(STEPS + 1):
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            model(inp).float().sum().backward()
            if step:  # the first step warms the kernels up
                best = min(best, time.perf_counter() - started)
        times[channels_last] = best
    model.to(memory_format=torch.contiguous_format)
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {"channels_last": times[True] < times[False], "nchw_s": times[False], "nhwc_s": times[True]}


def _cache_file(run: Any) -> Path | None:
    repo = getattr(run, "repo", None)
    return Path(repo.root) / ".cache" / "channels_last.json" if repo is not None else None


def _read(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path | None, data: dict) -> None:
    if path is None:
        return
    from dlkit.store.atomic import write_json

    try:
        write_json(path, data)
    except OSError:  # a cache: a read-only repository only means measuring again next time
        pass
