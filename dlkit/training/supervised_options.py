"""The supervised trainer's options, their defaults and checks.

No torch here: the core plugin registers these when plugins load, and ``dlkit --help`` must not
pay for torch.
"""

from __future__ import annotations

from typing import Any

from dlkit.errors import InputError

DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 64,
    "lr": 1e-3,
    "optimizer": "adamw",  # adam | adamw | sgd
    "weight_decay": 1e-4,
    "momentum": 0.9,  # sgd only
    "schedule": "cosine",  # cosine | step | none
    "step_size": 10,  # step schedule: epochs between decays
    "gamma": 0.1,  # step schedule: decay factor
    "patience": 10,  # early stopping on val_loss; 0 disables
    "min_delta": 0.0,
    "restore_best": True,  # keep the weights of the best validation epoch
    "clip_grad": 0.0,  # max gradient norm; 0 disables
    "augment": 0,  # images: random shifts of up to N pixels, zero padded
    "label_smoothing": 0.0,
    "amp": False,  # mixed precision (float16 on CUDA, bfloat16 on CPU)
    "deterministic": False,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "workers": -1,  # DataLoader processes reading streamed data; -1: the CPUs available, up to 4
    "channels_last": None,  # conv models on images: None measures which memory format is faster here
}


def validate(config: dict) -> None:
    """Refuse option values no run could use, naming the option."""
    checks = [
        ("epochs", config["epochs"] >= 1, "must be >= 1"),
        ("batch_size", config["batch_size"] >= 1, "must be >= 1"),
        ("lr", config["lr"] > 0, "must be > 0"),
        ("optimizer", config["optimizer"] in ("adam", "adamw", "sgd"), "must be adam, adamw or sgd"),
        ("schedule", config["schedule"] in ("cosine", "step", "none"), "must be cosine, step or none"),
        ("patience", config["patience"] >= 0, "must be >= 0"),
        ("augment", config["augment"] >= 0, "must be >= 0"),
        ("weight_decay", config["weight_decay"] >= 0, "must be >= 0"),
        ("clip_grad", config["clip_grad"] >= 0, "must be >= 0"),
        ("label_smoothing", 0 <= config["label_smoothing"] < 1, "must be in [0, 1)"),
        ("workers", isinstance(config["workers"], int) and config["workers"] >= -1, "must be -1 (auto) or >= 0"),
        ("channels_last", config["channels_last"] in (None, True, False), "must be true or false (unset: measured)"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise InputError(f"train.{key} {why}, got {config[key]!r}")


