"""What the training inputs looked like, so that ``predict`` can tell an input that is not like them.

A model answers confidently on anything: a black-on-white drawing fed to a model trained on the
light-on-dark digits comes back as "8" at 0.97. Training records the distribution of its inputs
(per-sample mean brightness for images, per-feature mean and spread for tables) in the input
spec, which travels in meta.json and the ONNX metadata; ``predict`` compares each input with it.
"""

from __future__ import annotations

import numpy as np

Z_IMAGE = 4.0  # a sample's mean brightness this many standard deviations from training's
Z_FEATURE = 6.0  # a feature value this many standard deviations from training's mean
SAMPLE_ROWS = 10_000  # the statistics of a larger split come from this many evenly spaced rows
CHUNK_BYTES = 16 * 2 ** 20  # float64 bytes of rows read at a time


def input_stats(x: np.ndarray, kind: str) -> dict:
    """The statistics :func:`unusual_inputs` compares with, from the training split ``x``
    (a bounded sample of its rows, read :data:`CHUNK_BYTES` of float64 at a time: neither a
    streamed split nor the sample is ever held whole)."""
    n = len(x)
    rows = np.linspace(0, n - 1, SAMPLE_ROWS).astype(np.int64) if n > SAMPLE_ROWS else np.arange(n)
    width = int(np.prod(x.shape[1:], dtype=np.int64)) if len(x.shape) > 1 else 1
    step = max(1, CHUNK_BYTES // (8 * max(width, 1)))
    # Per-feature count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.);
    # the statistics over all values follow from them (within-feature plus between-feature spread).
    count, mean, m2 = 0, np.zeros(width), np.zeros(width)
    sample_means = []
    for i in range(0, len(rows), step):
        flat = np.asarray(x[rows[i:i + step]], dtype=np.float64).reshape(-1, width)
        k = len(flat)
        chunk_mean = flat.mean(axis=0)
        chunk_m2 = ((flat - chunk_mean) ** 2).sum(axis=0)
        delta = chunk_mean - mean
        total = count + k
        mean = mean + delta * (k / total)
        m2 = m2 + chunk_m2 + delta ** 2 * (count * k / total)
        count = total
        if kind == "image":
            sample_means.append(flat.mean(axis=1))
    if not count:
        return {"mean": 0.0, "std": 0.0}
    feature_var = m2 / count
    overall = float(mean.mean())
    out = {"mean": overall, "std": float(np.sqrt(feature_var.mean() + ((mean - overall) ** 2).mean()))}
    if kind == "image":
        means = np.concatenate(sample_means)
        out["sample_mean"] = [float(means.mean()), float(means.std())]
    elif kind == "tabular":
        out["feature_mean"] = mean.tolist()
        out["feature_std"] = np.sqrt(feature_var).tolist()
    return out


def expected_input(spec: dict) -> str:
    """One line: the shape, value range and (for images) polarity the model was trained on."""
    shape = "x".join(str(d) for d in spec.get("shape", []))
    lo, hi = (spec.get("range") or [0.0, 1.0])[:2]
    text = f"{spec.get('kind', 'input')} {shape}, values {lo:.3g}..{hi:.3g}"
    stats = spec.get("stats") or {}
    if spec.get("kind") == "image" and "sample_mean" in stats:
        m = stats["sample_mean"][0]
        mid = lo + (hi - lo) / 2
        text += f", mean {m:.2f} ({'light strokes on a dark background' if m < mid else 'dark on light'})"
    return text


def unusual_inputs(batch: np.ndarray, spec: dict) -> list[str | None]:
    """Per sample, why it is far outside the training inputs (None when it is not, or when the
    model recorded no statistics)."""
    stats = spec.get("stats") or {}
    flat = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1)
    out: list[str | None] = [None] * len(flat)
    if "sample_mean" in stats:
        m, s = stats["sample_mean"]
        for i, value in enumerate(flat.mean(axis=1)):
            if abs(value - m) > Z_IMAGE * max(s, 1e-6):
                hint = " (inverted? try --invert)" if (value - m) * (m - 0.5) < 0 else ""
                out[i] = (f"mean value {value:.2f} is far from the training images' {m:.2f} +- {s:.2f}"
                          f"{hint}")
    elif "feature_mean" in stats:
        means, stds = np.asarray(stats["feature_mean"]), np.maximum(np.asarray(stats["feature_std"]), 1e-6)
        names = spec.get("features") or [f"feature {j + 1}" for j in range(len(means))]
        for i, row in enumerate(flat):
            if row.shape != means.shape:
                continue
            z = np.abs(row - means) / stds
            j = int(np.argmax(z))
            if z[j] > Z_FEATURE:
                out[i] = (f"{names[j]} = {row[j]:.4g} is far outside the training data "
                          f"({means[j]:.4g} +- {stds[j]:.3g})")
    return out
