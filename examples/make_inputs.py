"""Write the input files the README's tour uses, from data that ships with scikit-learn.

    python examples/make_inputs.py [--out DIR]

- ``seven.png``: a 7 of the digits data (light strokes on black, as the model was trained),
  drawn at 128x128 pixels as a user's image would be; ``dlkit predict cnn-digits seven.png``.
- ``seven-on-paper.png``: the same 7 dark on white paper, as drawn with a pen; ``dlkit predict``
  warns that it is unlike the training images, and ``--invert`` reads it right.
- ``iris.csv``: scikit-learn's bundled iris with a header and the class names in a ``species``
  column; ``dlkit train mlp --data iris.csv``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

IRIS_HEADER = ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]


def seven_images(out: Path) -> list[Path]:
    """The first 7 of sklearn's digits at 128x128: light on dark, and dark on light."""
    import numpy as np
    from PIL import Image, ImageFilter
    from sklearn.datasets import load_digits

    digits = load_digits()
    image = digits.images[list(digits.target).index(7)]  # 8x8, values 0..16
    pixels = (image / 16.0 * 255.0).astype(np.uint8)
    big = Image.fromarray(pixels, "L").resize((128, 128), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    paths = [out / "seven.png", out / "seven-on-paper.png"]
    big.save(paths[0])
    Image.fromarray(255 - np.asarray(big), "L").save(paths[1])
    return paths


def iris_csv(out: Path) -> Path:
    """sklearn's iris.csv (first line: counts and class names) as a plain CSV with a header."""
    import sklearn.datasets

    bundled = Path(sklearn.datasets.__file__).parent / "data" / "iris.csv"
    with open(bundled, newline="") as f:
        rows = list(csv.reader(f))
    names = rows[0][2:]
    path = out / "iris.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(IRIS_HEADER)
        for row in rows[1:]:
            writer.writerow([*row[:-1], names[int(row[-1])]])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder to write the files to (default: here)")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for path in [*seven_images(out), iris_csv(out)]:
        print(path)


if __name__ == "__main__":
    main()
