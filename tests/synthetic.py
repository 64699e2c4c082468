"""Small generated image folders for the tests that train on "own data"."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# One colour per class (RGB in [0, 1]); a class is a blob of its colour on a dim noisy
# background. The sixth, grey, is unlike the five colours before it: the open-set tests
# train on those five and expect grey blobs to be "unknown".
COLOURS = np.array([
    [1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1], [0.1, 1.0, 1.0],
    [0.5, 0.5, 0.5], [1.0, 0.1, 1.0], [1.0, 0.5, 0.1],
])  # fmt: skip


def blob_image(rng: np.random.Generator, colour: np.ndarray, size: int) -> np.ndarray:
    """A disk of `colour` at a random place and radius, on noise; uint8 (size, size, 3)."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
    radius = rng.uniform(size * 0.25, size * 0.4)
    disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2)[..., None]
    image = np.where(disk, colour * rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.25, (size, size, 1)))
    image = image + rng.normal(0, 0.04, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_image_folder(
    root: Path, classes: int = 6, per_class: int = 30, size: int = 20, seed: int = 0, grayscale: bool = False
) -> list[str]:
    """`root/class_k/img_i.png` for `classes` classes; returns the class names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = [f"class_{k}" for k in range(classes)]
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.fromarray(blob_image(rng, COLOURS[k], size))
            (image.convert("L") if grayscale else image).save(root / name / f"img_{i:03d}.png")
    return names
