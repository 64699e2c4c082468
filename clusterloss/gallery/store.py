"""The gallery's source of truth: one SQLite database (WAL journal).

Tables: `meta` (key/value: dim, metric, kind, model hash, generation, calibration),
`classes` (stable integer id per class name), `items` (id, class, source path, model hash,
time added, float32 embedding) and `probes` (the held-out calibration set, kept so a changed
gallery is recalibrated without embedding anything again).

Every change is one transaction (`BEGIN IMMEDIATE`): a kill at any instant leaves the
database as before or as after it; writers of several processes queue on SQLite's lock (up
to `timeout` seconds); readers see the last committed state. `generation` grows with every
committed change; `removed_generation` is the last one that removed or replaced items (a
derived index older than it must be rebuilt, a newer one only needs the items added since).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

FORMAT_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS classes (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    class_id INTEGER NOT NULL REFERENCES classes(id),
    path TEXT,
    model_sha256 TEXT,
    added REAL NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_class ON items(class_id);
CREATE INDEX IF NOT EXISTS items_path ON items(path);
CREATE TABLE IF NOT EXISTS probes (id INTEGER PRIMARY KEY, class TEXT NOT NULL, path TEXT,
                                   embedding BLOB NOT NULL);
"""

VARIABLES = 500  # values bound in one statement (older SQLite builds allow at most 999)


def _in_parts(values: Sequence[Any]) -> Iterator[tuple[str, list[Any]]]:
    """`(marks, part)`: `values` in parts that one statement can bind, with their "?,?,..."."""
    for start in range(0, len(values), VARIABLES):
        part = list(values[start : start + VARIABLES])
        yield ",".join("?" * len(part)), part


class Store:
    """A connection to a gallery database (`":memory:"` for one in memory)."""

    def __init__(self, path: str, timeout: float = 30.0):
        self.path = path
        self.conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        if path != ":memory:":
            self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a kill never loses a commit
        self.conn.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def write(self, removes: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction that bumps `generation` (and `removed_generation` if it
        `removes` items): all of it or nothing."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            generation = self.generation() + 1
            self.set_meta(generation=generation, **({"removed_generation": generation} if removes else {}))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def create(self, settings: dict[str, Any]) -> None:
        self.conn.executescript(SCHEMA)
        with self.write():
            if self.meta("format") is None:
                self.set_meta(
                    format=FORMAT_VERSION, generation=0, removed_generation=0, created=time.time(), **settings
                )

    # ------------------------------------------------------------------ meta

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, **values: Any) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()]
        )

    def generation(self) -> int:
        return int(self.meta("generation", 0))

    # ------------------------------------------------------------------ classes and items

    def class_names(self) -> dict[int, str]:
        return dict(self.conn.execute("SELECT id, name FROM classes ORDER BY id"))

    def class_ids(self, names: Sequence[str], create: bool) -> np.ndarray:
        """Ids of class names (created in the open transaction if `create`, else -1)."""
        known = {name: i for i, name in self.class_names().items()}
        ids = []
        for name in names:
            if name not in known and create:
                known[name] = self.conn.execute("INSERT INTO classes (name) VALUES (?)", (name,)).lastrowid
            ids.append(known.get(name, -1))
        return np.asarray(ids, np.int64)

    def insert(
        self, embeddings: np.ndarray, class_ids: np.ndarray, paths: Sequence[str | None], model_sha256: str | None
    ) -> np.ndarray:
        """Insert items (inside `write()`); their ids, consecutive."""
        now = time.time()
        first = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'items'").fetchone()[
            0
        ]
        self.conn.executemany(
            "INSERT INTO items (class_id, path, model_sha256, added, embedding) VALUES (?, ?, ?, ?, ?)",
            ((int(c), p, model_sha256, now, e.tobytes()) for c, p, e in zip(class_ids, paths, embeddings)),
        )
        return np.arange(first + 1, first + 1 + len(embeddings), dtype=np.int64)

    def items(self, after_id: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(ids, class_ids, embeddings)` of the items with id > `after_id`, by id."""
        rows = self.conn.execute(
            "SELECT id, class_id, embedding FROM items WHERE id > ? ORDER BY id", (after_id,)
        ).fetchall()
        dim = int(self.meta("dim"))
        if not rows:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, dim), np.float32)
        ids, classes, blobs = zip(*rows)
        vectors = np.frombuffer(b"".join(blobs), np.float32).reshape(len(rows), dim)
        return np.asarray(ids, np.int64), np.asarray(classes, np.int64), vectors

    def paths(self, ids: Sequence[int]) -> dict[int, str | None]:
        found: dict[int, str | None] = {}
        for marks, part in _in_parts([int(i) for i in ids]):
            found.update(self.conn.execute(f"SELECT id, path FROM items WHERE id IN ({marks})", part))
        return found

    def count_paths(self, paths: Sequence[str]) -> int:
        return sum(
            self.conn.execute(f"SELECT COUNT(*) FROM items WHERE path IN ({marks})", part).fetchone()[0]
            for marks, part in _in_parts(paths)
        )

    def delete(self, where: str, values: Sequence[Any]) -> int:
        """Delete the items matching `where`, a condition with `{}` where the `?` marks of
        `values` go, e.g. "path IN ({})" (inside `write()`), then the classes left empty."""
        count = sum(
            self.conn.execute(f"DELETE FROM items WHERE {where.format(marks)}", part).rowcount
            for marks, part in _in_parts(values)
        )
        self.conn.execute("DELETE FROM classes WHERE id NOT IN (SELECT DISTINCT class_id FROM items)")
        return count

    # ------------------------------------------------------------------ probes

    def set_probes(self, embeddings: np.ndarray, classes: Sequence[str], paths: Sequence[str | None]) -> None:
        self.conn.execute("DELETE FROM probes")
        self.conn.executemany(
            "INSERT INTO probes (class, path, embedding) VALUES (?, ?, ?)",
            ((c, p, e.tobytes()) for c, p, e in zip(classes, paths, embeddings)),
        )

    def drop_probes(self, paths: Sequence[str]) -> None:
        for marks, part in _in_parts(paths):
            self.conn.execute(f"DELETE FROM probes WHERE path IN ({marks})", part)

    def probes(self) -> tuple[np.ndarray, list[str]]:
        rows = self.conn.execute("SELECT class, embedding FROM probes ORDER BY id").fetchall()
        dim = int(self.meta("dim"))
        if not rows:
            return np.empty((0, dim), np.float32), []
        classes, blobs = zip(*rows)
        return np.frombuffer(b"".join(blobs), np.float32).reshape(len(rows), dim), list(classes)
