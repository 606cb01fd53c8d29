"""Image grids as PNG with numpy and Pillow only (``dlkit generate`` runs without torch)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

CELL_PIXELS = 32  # small images (8x8 digits) are scaled up to about this size per cell


def grid_array(images: np.ndarray, value_range, rows: int | None = None, cols: int | None = None,
               pad: int = 1) -> np.ndarray:
    """Tile (N, C, H, W) images into one uint8 (rows*H', cols*W'[, 3]) array.

    Pixels are mapped from ``value_range`` to 0..255; images smaller than ``CELL_PIXELS`` are
    enlarged by an integer factor (nearest neighbour) so that a grid of 8x8 digits is legible.
    Empty cells stay black.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images shaped (N, 1|3, H, W), got {images.shape}")
    n, channels, height, width = images.shape
    if cols is None:
        cols = max(1, math.ceil(math.sqrt(n))) if rows is None else max(1, math.ceil(n / rows))
    if rows is None:
        rows = max(1, math.ceil(n / cols))
    low, high = float(value_range[0]), float(value_range[1])
    pixels = np.clip((images - low) / (high - low), 0.0, 1.0)
    pixels = np.round(pixels * 255).astype(np.uint8).transpose(0, 2, 3, 1)  # NHWC
    scale = max(1, CELL_PIXELS // max(height, width))
    if scale > 1:
        pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    ch, cw = height * scale + pad, width * scale + pad
    canvas = np.zeros((rows * ch + pad, cols * cw + pad, channels), dtype=np.uint8)
    canvas[...] = 64  # grey gutters separate the cells
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        canvas[pad + r * ch: pad + r * ch + height * scale, pad + c * cw: pad + c * cw + width * scale] = pixels[i]
    return canvas[..., 0] if channels == 1 else canvas


def save_grid(path: str | Path, images: np.ndarray, value_range, rows: int | None = None,
              cols: int | None = None) -> Path:
    """Write a PNG grid atomically; returns the path."""
    from PIL import Image

    from dlkit import atomic_path

    array = grid_array(images, value_range, rows, cols)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


def class_rows(num_classes: int, n: int) -> np.ndarray:
    """Labels for ``n`` samples laid out one row per class: ``ceil(n / K)`` of each, in order."""
    per = max(1, math.ceil(n / num_classes))
    return np.repeat(np.arange(num_classes, dtype=np.int64), per)[:n]
