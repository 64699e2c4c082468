"""A run's searchable gallery, `RUN_DIR/index/`: a `clusterloss.Gallery` (SQLite database,
the source of truth, with its index cache) named by `index/CURRENT`, and `calibration.json`,
the open-set trade-off as last printed.

`index build` writes a whole new database beside the old one and then replaces `CURRENT`
(one atomic rename): a failed or killed build leaves the old gallery as it was. `index add`
and `index remove` change the current database in one transaction each (no retraining, the
other items are not embedded again) and the gallery recalibrates itself on its stored
probes. The gallery records a hash of the `model.keras` that embedded it: a later model
makes it stale (refused).

The probes that calibrate the open-set threshold (see `clusterloss.gallery.calibration`) are
held-out images: the run's validation split (else its test split), or `--calibrate PATH`, a
folder of class sub-folders whose images are not in the gallery. The classes of the gallery
are matched to the probes' by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from clusterloss.app.errors import RunError
from clusterloss.app.results import embed_all
from clusterloss.app.rundir import INDEX, write_text
from clusterloss.data import DATASETS, Dataset, ImageFiles, load_dataset
from clusterloss.data.folder import labelled_images, read_npz
from clusterloss.gallery import Calibration, CalibrationError, Gallery
from clusterloss.gallery.calibration import DEFAULT_FAR

CURRENT = Path(INDEX) / "CURRENT"
CALIBRATION_FILE = Path(INDEX) / "calibration.json"
LEGACY = ("gallery.index", "info.json", "paths.txt")  # an index of clusterloss before galleries


def model_hash(run_dir: str | Path) -> str:
    """sha256 of RUN_DIR/model.keras."""
    digest = hashlib.sha256()
    with open(Path(run_dir) / "model.keras", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_format(model) -> tuple[tuple[int, int] | None, int | None]:
    """`(size, channels)` of the images the model takes (None, None for vectors)."""
    shape = tuple(model.backbone.input_shape[1:])
    return (shape[:2], shape[2]) if len(shape) == 3 else (None, None)


def _load(model, source: str, **splits: Any) -> Dataset:
    """A folder, an .npz or a built-in set in the model's input format."""
    size, channels = input_format(model)
    builtin = source in DATASETS
    try:
        return load_dataset(
            source if builtin else os.path.abspath(source),
            channels=channels,
            **splits,
            **({"image_size": size} if size else {}),
        )
    except ValueError as error:
        raise RunError(str(error)) from None


def embed_checked(model, x: Any, what: str, verbose: Any = 0) -> np.ndarray:
    """`embed_all`, with a `RunError` naming `what` when the model gives NaN or inf."""
    emb = embed_all(model, x, verbose)
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if len(bad):
        raise RunError(
            f"the model gives NaN or inf embeddings for {len(bad)} of {len(emb)} inputs of {what} "
            f"(the first: #{bad[0]}); a diverged model: retrain it (lower --learning-rate)"
        )
    return emb


def gallery_data(model, data: Dataset, source: str | None) -> tuple[Any, list[str]]:
    """`(x, class names)` of the gallery: the run's training set, or every sample of
    `source` (a folder, an .npz, or a built-in set's training part)."""
    if source is None:
        return data.x_train, [data.class_names[i] for i in data.y_train]
    builtin = source in DATASETS
    found = _load(model, source, val_split=0.0, test_split=None if builtin else 0.0)
    return found.x_train, [found.class_names[i] for i in found.y_train]


def probe_data(model, data: Dataset, calibrate: str | None) -> tuple[Any, list[str], str]:
    """`(x, class names, description)` of the calibration probes: `calibrate` (a folder of
    class sub-folders, an .npz or a built-in set), else the run's validation split, else
    its test split."""
    if calibrate is not None:
        found = _load(model, calibrate, val_split=0.0, test_split=None if calibrate in DATASETS else 0.0)
        return found.x_train, [found.class_names[i] for i in found.y_train], str(calibrate)
    if len(data.y_val):
        return data.x_val, [data.class_names[i] for i in data.y_val], "the run's validation split"
    return data.x_test, [data.class_names[i] for i in data.y_test], "the run's test split"


def calibrate_gallery(gallery: Gallery, model, data: Dataset, calibrate: str | None, *,
                      far: float | None, tar: float | None, verbose: Any = 0) -> str:  # fmt: skip
    """Calibrate `gallery` on the probes (see `probe_data`); the lines to print (the table
    and the chosen rule, or why there is no threshold)."""
    x, names, described = probe_data(model, data, calibrate)
    if not len(names):
        raise RunError(
            "no held-out images to calibrate on (the run has no validation or test split); "
            "pass --calibrate PATH, a folder of labelled images that are not in the gallery"
        )
    paths = getattr(x, "paths", None)
    if paths is not None and gallery.count_paths(paths):
        raise RunError(
            f"{described}: images that are in the gallery cannot calibrate it (a probe would find "
            "itself); pass images that are not enrolled"
        )
    try:
        gallery.calibrate(embed_checked(model, x, described, verbose), names, far=far, tar=tar, paths=paths)
    except CalibrationError:
        pass  # the gallery keeps no threshold and the reason, which describe_calibration prints
    return describe_calibration(gallery, f"{len(names)} probes of {described}")


def describe_calibration(gallery: Gallery, probes: str | None = None) -> str:
    """The trade-off table and the rule in force (or why there is none), for people."""
    calibration: Calibration | None = gallery.calibration
    error = gallery.stats()["calibration_error"]
    if calibration is None:
        reason = error or "not calibrated (clusterloss calibrate RUN_DIR)"
        return f"no open-set threshold ({reason}); search names the nearest class for every query"
    lines = [
        f"open-set calibration{f' on {probes}' if probes else ''}:",
        calibration.format_table(),
        calibration.summary(),
    ]
    if calibration.note:
        lines.append(f"note: {calibration.note}")
    if calibration.warning():
        lines.append(f"warning: {calibration.warning()}")
    return "\n".join(lines)


def write_calibration(run_dir: str | Path, gallery: Gallery) -> None:
    """RUN_DIR/index/calibration.json: the calibration in force (or the reason there is none)."""
    calibration = gallery.calibration
    body = {
        "calibration": None if calibration is None else calibration.to_dict(),
        "error": gallery.stats()["calibration_error"],
        "gallery_generation": gallery.stats()["generation"],
    }
    write_text(Path(run_dir) / CALIBRATION_FILE, json.dumps(body, indent=2) + "\n")


def current(run_dir: str | Path) -> dict[str, str] | None:
    """RUN_DIR/index/CURRENT: `{"database": file name, "source": "train" or the --data
    path}` of the run's gallery, or None."""
    file = Path(run_dir) / CURRENT
    if not file.is_file():
        return None
    try:
        found = json.loads(file.read_text())
        database = Path(run_dir) / INDEX / found["database"]
        if "/" in found["database"] or not database.is_file():
            raise ValueError(f"no file {database}")
    except (ValueError, KeyError, TypeError) as error:
        raise RunError(
            f"{file} does not name a gallery ({error}); rebuild it: clusterloss index build {run_dir}"
        ) from None
    return found


def gallery_path(run_dir: str | Path) -> Path | None:
    """The current gallery database of a run, or None."""
    found = current(run_dir)
    return None if found is None else Path(run_dir) / INDEX / found["database"]


def open_run_gallery(run_dir: str | Path, model_sha256: str | None = None, **options: Any) -> Gallery:
    """The run's gallery (`options`: `kind`, `ef_search` of `Gallery`); a `RunError` if
    there is none or it was built from another model.keras than the run's present one
    (stale)."""
    run_dir = Path(run_dir)
    path = gallery_path(run_dir)
    if path is None:
        legacy = any((run_dir / INDEX / name).exists() for name in LEGACY)
        why = "was built by an older clusterloss" if legacy else "has no gallery"
        raise RunError(f"{run_dir} {why}; build one: clusterloss index build {run_dir}")
    try:
        gallery = Gallery(path, **options)
    except ValueError as error:
        raise RunError(f"{error}; rebuild it: clusterloss index build {run_dir}") from None
    if gallery.stale(model_sha256 or model_hash(run_dir)):
        gallery.close()
        raise RunError(
            f"{run_dir / INDEX} was built from another model.keras than the run's present one "
            f"(stale); rebuild it: clusterloss index build {run_dir}"
        )
    return gallery


def build_gallery(run_dir: str | Path, model, data: Dataset, source: str | None = None, *,
                  metric: str = "cosine", kind: str = "flat", far: float | None = DEFAULT_FAR,
                  tar: float | None = None, calibrate: str | None = None,
                  verbose: Any = 0) -> tuple[Gallery, str]:  # fmt: skip
    """Embed the gallery and calibrate it into a new database, then make it the run's
    current one (see the module docstring); `(gallery, lines to print)`."""
    run_dir = Path(run_dir)
    x, names = gallery_data(model, data, source)
    emb = embed_checked(model, x, "the gallery", verbose)
    folder = run_dir / INDEX
    folder.mkdir(exist_ok=True)
    name = f"gallery-{time.time_ns()}-{os.getpid()}.sqlite"
    gallery = Gallery(folder / name, dim=emb.shape[1], metric=metric, kind=kind, model_sha256=model_hash(run_dir))
    try:
        gallery.add(emb, names, getattr(x, "paths", None))
        lines = calibrate_gallery(gallery, model, data, calibrate, far=far, tar=tar, verbose=verbose)
        gallery.flush()
        write_calibration(run_dir, gallery)
        source_name = "train" if source is None else source if source in DATASETS else os.path.abspath(source)
        write_text(run_dir / CURRENT, json.dumps({"database": name, "source": source_name}) + "\n")  # atomic
    except BaseException:
        gallery.close()
        _remove_database(folder / name)
        raise
    for stale in folder.iterdir():
        if stale.name.startswith("gallery-") and not stale.name.startswith(name) or stale.name in LEGACY:
            _remove_database(stale)
    return gallery, lines


def _remove_database(path: Path) -> None:
    for file in path.parent.glob(path.name + "*"):
        file.unlink(missing_ok=True)


def enrol(
    run_dir: str | Path, model, source: str, class_name: str | None, verbose: Any = 0
) -> tuple[Gallery, int, str]:
    """Embed the images of `source` and add them to the run's gallery; `(gallery, count,
    lines to print)`."""
    gallery = open_run_gallery(run_dir)
    size, channels = input_format(model)
    if size is None:
        raise RunError("index add takes images; this run's model takes vectors (rebuild with index build --data)")
    paths, names = labelled_images(source, class_name)
    gallery.add(
        embed_checked(model, ImageFiles(paths, size, channels), source, verbose),
        names,
        [os.path.abspath(p) for p in paths],
    )
    gallery.flush()
    write_calibration(run_dir, gallery)
    return gallery, len(paths), describe_calibration(gallery)


def unenrol(run_dir: str | Path, classes: list[str] | None, paths: list[str] | None) -> tuple[Gallery, int, str]:
    """Remove classes or files from the run's gallery; `(gallery, count, lines to print)`."""
    gallery = open_run_gallery(run_dir)
    missing = sorted(set(classes or ()) - set(gallery.class_names))
    if missing:
        raise RunError(f"no class {missing[0]!r} in the gallery ({len(gallery.class_names)} classes)")
    count = gallery.remove(classes=classes, paths=[os.path.abspath(p) for p in paths] if paths else None)
    if paths and not count:
        raise RunError(f"none of {', '.join(paths)} is in the gallery")
    gallery.flush()
    write_calibration(run_dir, gallery)
    return gallery, count, describe_calibration(gallery)


def run_set_gallery(model, data: Dataset, part: str, verbose: Any = 0) -> tuple[Gallery, str]:
    """An in-memory gallery of one part of the run's data, embedded now: the training set
    (calibrated on the held-out split) or the test / unknown set (no threshold)."""
    x, y = {
        "train": (data.x_train, data.y_train),
        "test": (data.x_test, data.y_test),
        "unknown": (data.x_unknown, data.y_unknown),
    }[part]
    if not len(y):
        raise RunError(
            f"the {part} set is empty (unknown holds the classes left out of training: "
            "olivetti's people 30-39, or train with --known-classes)"
        )
    emb = embed_checked(model, x, f"the {part} set", verbose)
    gallery = Gallery(dim=emb.shape[1])
    gallery.add(emb, [data.all_class_names[i] for i in y], getattr(x, "paths", None))
    if part == "train":
        calibrate_gallery(gallery, model, data, None, far=DEFAULT_FAR, tar=None)
    return gallery, (f"the run's {part} set, embedded now ({len(y)} items; `clusterloss index build` saves a gallery)")


def _names_by_id(npz: str) -> dict[str, str]:
    """`{str(id): class name}` of the .npz a run was trained on, reading its `y` and
    `class_names` only (read_npz's naming: the names in sorted id order, else the ids)."""
    with np.load(npz, allow_pickle=False) as arrays:
        ids = [str(i) for i in np.unique(arrays["y"]).tolist()]
        names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays.files else ids
    return dict(zip(ids, names))


def read_queries(
    model, images: list[str] | None, npz: str | None, trained_on: str | None = None
) -> tuple[Any, list[str] | None, list[str]]:
    """`(x, class names or None, names)` of query files: images (in the model's input
    format) or an .npz with `x` (and optional `y`, the ids of the .npz the run was trained
    on, `trained_on`, whose class names they get; or with its own `class_names`), checked
    against the model's input."""
    size, channels = input_format(model)
    if images:
        if size is None:
            raise RunError("--images needs a model that takes images; this one takes vectors (use --npz)")
        missing = [p for p in images if not Path(p).is_file()]
        if missing:
            raise RunError(f"{missing[0]}: no such file")
        return ImageFiles(images, size, channels), None, list(images)
    x, labels, class_names = read_npz(npz, queries=True)
    classes = None if labels is None else [class_names[i] for i in labels]
    if classes is not None and str(trained_on).endswith(".npz"):
        with np.load(npz, allow_pickle=False) as arrays:
            own_names = "class_names" in arrays.files
        if not own_names:  # the names are the ids: those the run was trained on name them
            names_of = _names_by_id(trained_on)
            classes = [names_of.get(c, c) for c in classes]
    expected = tuple(model.backbone.input_shape[1:])
    if x.shape[1:] != expected:
        raise RunError(f"{npz}: queries of shape {x.shape[1:]} per sample; the model takes {expected}")
    if not np.isfinite(x).all():
        raise RunError(f"{npz}: queries hold NaN or inf values")
    return x, classes, [f"{npz}[{i}]" for i in range(len(x))]
