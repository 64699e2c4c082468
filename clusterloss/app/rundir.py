"""A run directory's safety: atomic writes, one writer at a time, no silent overwrite.

- Every file is written under a temporary name in the same directory, then renamed over
  the final name (`atomic_path`): a reader never sees half a file, a crash leaves the old
  file or the new one.
- `RunDir.lock()` creates `RUN_DIR/.lock` exclusively (`O_CREAT | O_EXCL`) holding the
  writer's pid and host; a second writer is refused while that process lives. A lock left
  by a process that no longer runs (same host, e.g. a killed `train`) is taken over, with
  a warning naming the dead pid; one from another host is refused (delete it by hand).
- `RunDir.prepare(overwrite, resume)`: a directory that holds a run is refused unless
  `overwrite` (which deletes every file and folder clusterloss writes there: the model,
  metrics, plots, report, `index/`, `logs/`, the checkpoint; nothing else) or `resume`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Iterator

from clusterloss.app.errors import RunError

LOCK = ".lock"
CHECKPOINT = "checkpoint"
INDEX = "index"
LOGS = "logs"
# Everything `train`, `evaluate` and `index build` write (what --overwrite deletes).
RUN_FILES = (
    "model.keras", "metrics.json", "embeddings.npz", "features.png", "history.png", "roc.png",
    "neighbors.png", "neighbors_unseen.png", "report.html",
)  # fmt: skip
RUN_FOLDERS = (INDEX, LOGS, CHECKPOINT)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` (same folder, name ending like `path`'s, so Keras and
    matplotlib see the right extension) that replaces `path` when the block ends without
    an exception; removed otherwise."""
    path = Path(path)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunDir:
    """The directory of one run (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def holds_run(self) -> list[str]:
        """The names of the run files and folders present."""
        return [n for n in RUN_FILES + RUN_FOLDERS if (self.path / n).exists()]

    def prepare(self, overwrite: bool = False, resume: bool = False) -> None:
        """Refuse a directory that holds a run, unless `overwrite` (clear it) or `resume`
        (continue it)."""
        if resume:  # `train` checked the checkpoint
            return
        present = self.holds_run()
        if present and not overwrite:
            raise RunError(
                f"{self.path} already holds a run ({', '.join(present[:4])}"
                f"{', ...' if len(present) > 4 else ''}); pass --overwrite to replace it (it "
                "deletes them, index/ included), --resume to continue a stopped run, or "
                "choose another --out"
            )
        if present:
            self.clear()

    def clear(self) -> None:
        """Delete every file and folder clusterloss writes here; nothing else."""
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        for name in RUN_FOLDERS:
            shutil.rmtree(self.path / name, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, create: bool = True) -> Iterator[None]:
        """Hold `RUN_DIR/.lock` for the block (see the module docstring); `create` the
        directory if needed (else a missing one is a `RunError`)."""
        if not create and not self.path.is_dir():
            raise RunError(f"{self.path}: no such run directory")
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK
        mine = {"pid": os.getpid(), "host": socket.gethostname()}
        for attempt in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if attempt or not self._take_over(lock):
                    raise RunError(self._held_message(lock)) from None
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(mine, handle)
            break
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(lock.read_text()) == mine:
                    lock.unlink()
            if created:  # a command that failed before writing anything leaves no folder
                with contextlib.suppress(OSError):
                    self.path.rmdir()

    def holder(self) -> dict | None:
        """The pid and host in the lock file, or None."""
        try:
            return json.loads((self.path / LOCK).read_text())
        except (OSError, ValueError):
            return None

    def _held_message(self, lock: Path) -> str:
        holder = self.holder() or {}
        return (f"{self.path} is in use by process {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} ({lock}); wait for it to finish or stop it")  # fmt: skip

    def _take_over(self, lock: Path) -> bool:
        """Remove a lock whose process is gone (same host); False if it may still run."""
        holder = self.holder()
        if holder is None:  # being written right now, or unreadable: leave it
            return False
        if holder.get("host") != socket.gethostname() or _alive(int(holder.get("pid", 0))):
            return False
        print(f"clusterloss: {self.path}: taking over the lock of process {holder['pid']}, "
              "which no longer runs", file=sys.stderr)  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        return True
