"""`Gallery`: enrolled embeddings with class names, searchable with an open-set decision.

The SQLite database (`clusterloss.gallery.store`) is the source of truth; the nearest-
neighbour `Index` is derived from it. On disk, `PATH` (the database) has beside it a cache of
the index, `PATH.<kind>.g<generation>.index`, written by `flush()`: opening a gallery loads that
file and then only the items added since (a removal since it means a rebuild from the
database). So a crash can leave a stale cache, never a wrong answer.

Enrolment (`add`, `remove`) needs no retraining and embeds nothing again. A gallery
calibrated with held-out probes (`calibrate`, see `clusterloss.gallery.calibration`) keeps
them and recalibrates itself after each change, at the same target; a changed gallery whose
recalibration fails keeps no threshold and says why in `stats()["calibration_error"]`.
Every method is thread-safe (one lock per gallery); other processes' changes become visible
with `refresh()`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from clusterloss._validation import as_embeddings, check_choice, check_metric, check_positive_int
from clusterloss.gallery import calibration as cal
from clusterloss.gallery.store import Store
from clusterloss.index import Index
from clusterloss.index.index import KINDS

UNKNOWN = "unknown"
_CACHE = re.compile(r"\.(\w+)\.g(\d+)\.index$")


def _names(classes: str | Sequence[str], n: int, name: str = "classes") -> list[str]:
    names = [classes] * n if isinstance(classes, str) else [str(c) for c in classes]
    if len(names) != n:
        raise ValueError(f"`{name}` must be one class name or one per embedding ({n}); got {len(names)}.")
    if any(not c.strip() for c in names):
        raise ValueError(f"`{name}` must be non-empty class names; got {next(c for c in names if not c.strip())!r}.")
    if UNKNOWN in names:
        raise ValueError(f"`{name}`: {UNKNOWN!r} is the open-set answer, not a class name.")
    return names


def _paths(paths: Sequence[str | None] | None, n: int) -> list[str | None]:
    if paths is None:
        return [None] * n
    paths = [None if p is None else os.fspath(p) for p in paths]
    if len(paths) != n:
        raise ValueError(f"`paths` must have one entry per embedding ({n}); got {len(paths)}.")
    return paths


class Gallery:
    """Enrolled embeddings in SQLite with a derived nearest-neighbour index.

    Args:
        path: the database file; opened if it exists, else created (which needs `dim`).
            None: a gallery in memory (`save` writes it to a file).
        dim, metric: for a new gallery: embedding size, `"cosine"` or `"euclidean"`.
        kind: the index kind (`"flat"` exact, `"hnsw"` or `"ivf"` approximate; see `Index`):
            a new gallery's (default "flat"), or another one to search an existing gallery
            with (its own is kept in the database).
        ef_search: HNSW's search beam (`Index`'s default 64): larger is slower and finds
            more of the true neighbours.
        model_sha256: for a new gallery, the hash of the model that embeds its items
            (`stale(hash)` compares it).
        backend: the `Index` backend (`"auto"`, `"faiss"` or `"numpy"`).
        timeout: seconds a writer waits for another process's write.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, dim: int | None = None,
                 metric: str = "cosine", kind: str | None = None, model_sha256: str | None = None,
                 backend: str = "auto", ef_search: int | None = None, timeout: float = 30.0):  # fmt: skip
        self.path = None if path is None else os.fspath(path)
        if self.path is not None and not os.path.exists(self.path) and dim is None:
            raise FileNotFoundError(f"{self.path}: no such gallery (pass `dim` to create one)")
        self._lock = threading.RLock()
        try:
            self._store = Store(self.path or ":memory:", timeout)
            if not self._has_schema() or self._store.meta("format") is None:
                if dim is None:
                    raise ValueError(f"{self.path}: not a clusterloss gallery (no gallery tables)")
                self._store.create(
                    {
                        "dim": check_positive_int(dim, "dim"),
                        "metric": check_metric(metric),
                        "kind": check_choice(kind or "flat", "kind", KINDS),
                        "model_sha256": model_sha256,
                    }
                )
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.path}: not a clusterloss gallery (SQLite: {error})") from None
        self.dim = int(self._store.meta("dim"))
        self.metric = self._store.meta("metric")
        self.kind = check_choice(kind or self._store.meta("kind"), "kind", KINDS)
        self._backend = backend
        self._ef_search = None if ef_search is None else check_positive_int(ef_search, "ef_search")
        self._load()

    def _has_schema(self) -> bool:
        return self._store.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is not None

    # ------------------------------------------------------------------ state

    def _new_index(self) -> Index:
        options = {} if self._ef_search is None else {"ef_search": self._ef_search}
        return Index(self.dim, metric=self.metric, kind=self.kind, backend=self._backend, **options)

    def _load(self) -> None:
        """The index from the newest usable cache file plus the items added since, else
        from the database alone."""
        generation = self._store.generation()
        removed = int(self._store.meta("removed_generation", 0))
        self._index = self._new_index()
        for cached_generation, file in self._caches():
            if removed <= cached_generation <= generation:
                with contextlib.suppress(OSError, ValueError):
                    self._index = Index.load(file, backend=self._backend)
                    self._index.ef_search = self._ef_search or self._index.ef_search
                    break
        self._catch_up()
        self._read_meta(generation)

    def _rebuild(self) -> None:
        self._index = self._new_index()
        self._catch_up()

    def _catch_up(self) -> None:
        """Add the database's items that the index lacks (ids grow: the ones past its last)."""
        last = int(self._index.ids.max(initial=0)) if len(self._index) else 0
        ids, labels, vectors = self._store.items(last)
        self._index.add(vectors, labels=labels, ids=ids)

    def _read_meta(self, generation: int) -> None:
        self._generation = generation
        self._dirty = False
        self._cached_generation = max((g for g, _ in self._caches()), default=-1)
        self._class_names = self._store.class_names()
        saved = self._store.meta("calibration")
        self._calibration = None if saved is None else cal.Calibration.from_dict(saved)
        self._calibration_error = self._store.meta("calibration_error")

    def _caches(self) -> list[tuple[int, str]]:
        """`(generation, file)` of the index caches of this kind on disk, newest first."""
        if self.path is None:
            return []
        found = []
        for file in glob.glob(glob.escape(self.path) + f".{self.kind}.g*.index"):
            match = _CACHE.search(file)
            if match and match.group(1) == self.kind:
                found.append((int(match.group(2)), file))
        return sorted(found, reverse=True)

    def refresh(self) -> bool:
        """Catch up with changes committed by other processes; True if there were any."""
        with self._lock:
            generation = self._store.generation()
            if generation == self._generation and not self._dirty:
                return False
            if self._dirty or int(self._store.meta("removed_generation", 0)) > self._generation:
                self._rebuild()
            else:
                self._catch_up()
            self._read_meta(generation)
            return True

    @contextlib.contextmanager
    def _change(self, removes: bool = False):
        """One committed change: inside SQLite's write lock, the index first catches up with
        what others committed, the block changes both, and the metadata is read back after
        the commit. A failed block rolls the database back and rebuilds the index."""
        with self._lock:
            try:
                with self._store.write(removes):
                    self.refresh()
                    yield
                self._read_meta(self._store.generation())
            except BaseException:
                self._dirty = True
                raise

    def flush(self) -> None:
        """Write the index cache for the present generation (atomically) and remove older
        ones; nothing for a gallery in memory or a cache that is current."""
        with self._lock:
            if self.path is None or self._cached_generation == self._generation:
                return
            final = f"{self.path}.{self.kind}.g{self._generation}.index"
            temporary = f"{os.path.dirname(final) or '.'}/.tmp-{os.getpid()}-{os.path.basename(final)}"
            try:
                self._index.save(temporary)
                os.replace(temporary, final)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
            self._cached_generation = self._generation
            for generation, file in self._caches():
                if generation < self._generation:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(file)

    def close(self) -> None:
        with self._lock:
            self._store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return (
            f"Gallery({self.path or 'in memory'}: {len(self)} items of {len(self._class_names)} "
            f"classes, {self.dim}-D {self.metric}, {self.kind})"
        )

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names.values())

    @property
    def model_sha256(self) -> str | None:
        return self._store.meta("model_sha256")

    @property
    def calibration(self) -> cal.Calibration | None:
        return self._calibration

    @property
    def threshold(self) -> float | None:
        return None if self._calibration is None else self._calibration.threshold

    @property
    def index(self) -> Index:
        return self._index

    def stale(self, model_sha256: str) -> bool:
        """Whether the items were embedded by another model than `model_sha256`."""
        return self.model_sha256 is not None and self.model_sha256 != model_sha256

    def path_of(self, item_id: int) -> str | None:
        with self._lock:
            return self._store.paths([item_id]).get(int(item_id))

    def count_paths(self, paths: Sequence[str]) -> int:
        """How many items have one of `paths` as their source."""
        with self._lock:
            return self._store.count_paths([os.fspath(p) for p in paths])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "path": self.path, "size": len(self), "num_classes": len(self._class_names),
                "dim": self.dim, "metric": self.metric, "kind": self.kind,
                "exact": self._index.is_exact, "index_backend": self._index.backend,
                "generation": self._generation, "model_sha256": self.model_sha256,
                "threshold": self.threshold,
                "calibration": None if self._calibration is None else self._calibration.summary(),
                "calibration_note": None if self._calibration is None else self._calibration.note,
                "calibration_error": self._calibration_error,
            }  # fmt: skip

    def search(self, queries, k: int = 5) -> list[dict[str, Any]]:
        """Per query: `prediction` (the nearest item's class, or "unknown" when its score
        does not pass the threshold), `known`, `score`, `threshold` and `neighbors`
        (rank, id, class, score, path), nearest first."""
        k = check_positive_int(k, "k")
        with self._lock:
            queries = as_embeddings(queries, "queries", dim=self.dim, allow_empty=True)
            if not len(self):
                raise ValueError("the gallery is empty: enrol items with `add` before `search`.")
            scores, rows = self._index.search(queries, k)
            ids, labels = self._index.ids, self._index.labels
            found = rows[rows >= 0]
            paths = self._store.paths(ids[found])
            answers = []
            for score_row, row in zip(scores, rows):
                neighbors = [
                    {"rank": rank + 1, "id": int(ids[j]), "class": self._class_names[int(labels[j])],
                     "score": float(s), "path": paths.get(int(ids[j]))}
                    for rank, (s, j) in enumerate(zip(score_row, row)) if j >= 0
                ]  # fmt: skip
                best = neighbors[0]["score"]
                known = self._calibration is None or self._calibration.accepts(best)
                answers.append({"prediction": neighbors[0]["class"] if known else UNKNOWN, "known": known,
                                "score": best, "threshold": self.threshold, "neighbors": neighbors})  # fmt: skip
            return answers

    # ------------------------------------------------------------------ changing

    def add(self, embeddings, classes: str | Sequence[str], paths: Sequence[str | None] | None = None) -> np.ndarray:
        """Enrol items (new or existing classes) in one transaction; their ids. A calibration
        probe with one of `paths` is dropped (no longer held out)."""
        embeddings = as_embeddings(embeddings, "embeddings", dim=self.dim, allow_empty=True)
        names, paths = _names(classes, len(embeddings)), _paths(paths, len(embeddings))
        with self._change():
            self._store.drop_probes([p for p in paths if p is not None])  # enrolled: no longer held out
            labels = self._store.class_ids(names, create=True)
            ids = self._store.insert(embeddings, labels, paths, self.model_sha256)
            self._index.add(embeddings, labels=labels, ids=ids)
            self._recalibrate()
        return ids

    def remove(
        self,
        *,
        classes: Sequence[str] | str | None = None,
        paths: Sequence[str] | None = None,
        ids: Sequence[int] | None = None,
    ) -> int:
        """Remove every item of `classes`, with a source path in `paths`, or with an id in
        `ids` (one transaction); the number removed. A class left with no item is gone."""
        groups = {
            "class_id IN (SELECT id FROM classes WHERE name IN ({}))": (classes, str),
            "path IN ({})": (paths, os.fspath),
            "id IN ({})": (ids, int),
        }
        given = {
            where: [kind(v) for v in ([values] if isinstance(values, (str, os.PathLike)) else values)]
            for where, (values, kind) in groups.items()
            if values is not None
        }
        if not given:
            raise ValueError("`remove` needs `classes`, `paths` or `ids`; got none.")
        with self._change(removes=True):
            count = sum(self._store.delete(where, values) for where, values in given.items())
            if count:
                self._rebuild()
                self._recalibrate()
        return count

    # ------------------------------------------------------------------ calibration

    def calibrate(self, embeddings, classes: Sequence[str], *, far: float | None = cal.DEFAULT_FAR,
                  tar: float | None = None, paths: Sequence[str | None] | None = None) -> cal.Calibration:  # fmt: skip
        """Choose the open-set threshold on held-out probes (embeddings with their class
        names, not in the gallery) at `far` (or `tar`), keep the probes, and return the
        `Calibration` (a `CalibrationError` when no threshold is usable; the gallery then
        keeps none)."""
        embeddings = as_embeddings(embeddings, "embeddings", dim=self.dim)
        names, paths = _names(classes, len(embeddings)), _paths(paths, len(embeddings))
        cal.calibrate_target(far, tar)  # a bad target is refused before anything is written
        with self._change():
            self._store.set_probes(embeddings, names, paths)
            self._store.set_meta(calibration_target={"far": far, "tar": tar})
            self._recalibrate()
        if self._calibration is None:
            raise cal.CalibrationError(self._calibration_error)
        return self._calibration

    def _recalibrate(self) -> None:
        """Inside a change: recompute the calibration from the stored probes and target
        against the index as the change leaves it."""
        target = self._store.meta("calibration_target")
        probes, names = self._store.probes()
        if target is None or not len(probes):
            return
        result, error = None, None
        if not len(self._index):
            error = "the gallery is empty"
        else:
            labels = self._store.class_ids(names, create=False)
            try:
                result = cal.calibrate(cal.probe_scores(self._index, probes, labels), self.metric, **target)
            except cal.CalibrationError as failure:
                error = str(failure)
        self._store.set_meta(calibration=None if result is None else result.to_dict(), calibration_error=error)

    def set_threshold(self, threshold: float | None) -> None:
        """Set the open-set threshold by hand (None: no threshold); drops the calibration."""
        with self._change():
            value = None
            if threshold is not None:
                value = cal.Calibration(
                    float(threshold), self.metric, None, None, None, None, {"manual": float(threshold)}, 0, 0
                ).to_dict()
            self._store.set_meta(calibration=value, calibration_target=None, calibration_error=None)

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> Gallery:
        """Copy this gallery to a new database file `path` (SQLite's backup: consistent
        while others write) with its index cache; the copy, opened. An existing file is
        refused."""
        path = os.fspath(path)
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; remove it or choose another path")
        temporary = f"{os.path.dirname(path) or '.'}/.tmp-{os.getpid()}-{os.path.basename(path)}"
        with self._lock:
            target = Store(temporary)
            try:
                self._store.conn.backup(target.conn)
                target.conn.execute("PRAGMA journal_mode=DELETE")
            finally:
                target.close()
            os.replace(temporary, path)
        copy = Gallery(path, backend=self._backend)
        copy.flush()
        return copy

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto") -> Gallery:
        """Open an existing gallery (`FileNotFoundError` if there is none)."""
        return cls(path, backend=backend)
