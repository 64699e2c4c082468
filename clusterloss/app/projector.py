"""Embeddings for TensorBoard's projector: `tensors.tsv`, `metadata.tsv` (label, class,
file), `sprite.png` (a grid of the images) and `projector_config.pbtxt`, in a folder that
`tensorboard --logdir RUN_DIR/logs` shows as the run "projector" (or load the TSV files at
https://projector.tensorflow.org)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clusterloss.app.rundir import atomic_path, write_text
from clusterloss.app.tensorboard import EventFile

MAX_POINTS = 10_000  # a seeded sample beyond this many
SPRITE_SIDE = 8192  # TensorBoard's largest sprite, in pixels


def _tsv_cell(text: Any) -> str:
    return str(text).replace("\t", " ").replace("\n", " ")


def export_projector(
    directory: str | Path,
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    images: Any = None,
    paths: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write the projector files for `embeddings` to `directory` (at most `MAX_POINTS`
    rows, a seeded sample); `images` (an array or `ImageFiles`, rows like `embeddings`)
    make the sprite. Returns the config path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = np.arange(len(embeddings))
    if len(rows) > MAX_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_POINTS, replace=False))
    write_text(directory / "tensors.tsv", "".join("\t".join(f"{v:.6g}" for v in embeddings[i]) + "\n" for i in rows))
    header = "label\tclass" + ("\tfile" if paths is not None else "") + "\n"
    write_text(directory / "metadata.tsv", header + "".join(
        f"{int(labels[i])}\t{_tsv_cell(class_names[int(labels[i])])}"
        + (f"\t{_tsv_cell(paths[i])}" if paths is not None else "") + "\n"
        for i in rows))  # fmt: skip
    sprite = ""
    if images is not None and len(images[:1].shape) == 4:
        cell = _write_sprite(directory / "sprite.png", images, rows)
        sprite = f'  sprite {{\n    image_path: "sprite.png"\n    single_image_dim: {cell}\n    single_image_dim: {cell}\n  }}\n'
    config = write_text(
        directory / "projector_config.pbtxt",
        (
            'embeddings {\n  tensor_name: "test_embeddings"\n  tensor_path: "tensors.tsv"\n'
            f'  metadata_path: "metadata.tsv"\n{sprite}}}\n'
        ),
    )
    EventFile(directory)  # makes the folder a TensorBoard run, so the projector finds it
    return config


def _write_sprite(path: Path, images: Any, rows: np.ndarray, chunk: int = 256) -> int:
    """A square grid of the images (read `chunk` at a time), each cell at most its image's
    size and small enough that the grid fits TensorBoard's limit. Returns the cell side."""
    from PIL import Image

    per_side = math.ceil(math.sqrt(len(rows)))
    first = images[rows[:1]][0]
    cell = max(1, min(max(first.shape[:2]), SPRITE_SIDE // per_side))
    sheet = Image.new("RGB", (per_side * cell, per_side * cell))
    for start in range(0, len(rows), chunk):
        batch = images[rows[start : start + chunk]]
        for offset, image in enumerate(batch):
            pixels = (np.clip(image, 0, 1) * 255).astype(np.uint8)
            if pixels.shape[-1] == 1:
                pixels = np.repeat(pixels, 3, axis=-1)
            tile = Image.fromarray(pixels[..., :3]).resize((cell, cell))
            i = start + offset
            sheet.paste(tile, ((i % per_side) * cell, (i // per_side) * cell))
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")
    return cell
