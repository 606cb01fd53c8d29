"""The ``distill`` trainer's options and their checks (no torch: registered when plugins load)."""

from __future__ import annotations

import math

from dlkit import SUPERVISED_DEFAULTS, InputError, validate_supervised

# Chosen on benchmarks/bench_distill.py (digits, CNN teacher, MLP student 1/20 its size).
TEMPERATURE = 4.0
ALPHA = 0.9
DEFAULTS = {
    **SUPERVISED_DEFAULTS,
    "temperature": TEMPERATURE,  # softens both distributions; T^2 keeps the soft gradients' scale
    "alpha": ALPHA,  # weight of the soft-target term; 1 - alpha goes to the labels
    "teacher": "",  # the teacher's version folder (models/NAME/V)
    # Labelled samples per class the hard-label term sees (0: every training sample). The soft
    # term still uses the whole training split: the teacher labels the rest (the transfer set).
    "labelled": 0,
}


def check_distill_options(temperature, alpha) -> None:
    """Refuse a temperature or weight no run could use, naming the option."""
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise InputError(f"temperature must be a number > 0, got {temperature!r}")
    if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise InputError(f"alpha must be between 0 and 1, got {alpha!r}")



def validate(config: dict) -> None:
    """The supervised trainer's checks plus the distillation options'."""
    validate_supervised(config)
    check_distill_options(config["temperature"], config["alpha"])
    n = config.get("labelled", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"labelled must be an integer >= 0 (labelled samples per class; 0: all), got {n!r}")
