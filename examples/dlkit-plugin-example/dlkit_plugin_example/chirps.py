"""The ``chirps`` data set: is a noisy tone's frequency rising, falling or steady?"""

import numpy as np

from dlkit import Dataset, InputError, make_dataset, value_range

LABELS = ["rising", "falling", "steady"]


def load(source: str, options: dict, seed: int) -> Dataset:
    """``n`` sequences (default 600) of ``steps`` samples (default 32), one feature, 3 classes.

    The signal is fixed (generated from a constant seed); ``seed`` chooses the split.
    """
    n, steps = options.get("n", 600), options.get("steps", 32)
    for key, value, low in (("n", n, 30), ("steps", steps, 8)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"data.{key} must be an integer >= {low}, got {value!r}")
    rng = np.random.default_rng(2024)
    y = np.arange(n) % 3
    t = np.linspace(0.0, 1.0, steps)[None, :]
    f0 = rng.uniform(2.0, 4.0, size=(n, 1))
    slope = np.select([y[:, None] == 0, y[:, None] == 1], [4.0, -1.5], 0.0)  # cycles per unit time, per unit time
    phase = 2 * np.pi * (f0 * t + 0.5 * slope * t ** 2) + rng.uniform(0, 2 * np.pi, size=(n, 1))
    x = (np.sin(phase) + rng.normal(0, 0.3, size=phase.shape)).astype(np.float32)[:, :, None]
    spec = {"kind": "sequence", "shape": [steps, 1], "dtype": "float32", "range": value_range(x)}
    return make_dataset("chirps", x, y, list(LABELS), spec, seed, options)
