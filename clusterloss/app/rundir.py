"""A run directory's safety: atomic writes, one writer at a time, no silent overwrite.

- Every file is written under a temporary name in the same directory, then renamed over
  the final name (`atomic_path`): a reader never sees half a file, a crash leaves the old
  file or the new one.
- `RunDir.lock()`: one writer at a time, decided by `fcntl.flock` on `RUN_DIR/.lock`
  (see `RunDir.lock`); the file's pid and host are for messages only. The kernel drops
  the lock of a process that dies, so a killed writer's lock (even an empty file, killed
  between create and write) is taken over at once, with a warning, and atomically: of
  any number of writers, exactly one gets in. Temporaries of killed writes
  (`.tmp-<pid>-*` of pids that no longer run) are removed when the lock is taken.
- `RunDir.prepare(overwrite, resume)`: a directory that holds a run is refused unless
  `overwrite` (which deletes every file and folder clusterloss writes there: the model,
  metrics, plots, report, `index/`, `logs/`, the checkpoint; nothing else) or `resume`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from clusterloss.app.errors import RunError

LOCK = ".lock"
CHECKPOINT = "checkpoint"
INDEX = "index"
LOGS = "logs"
FILES = "files.json"  # the files and split of a run's own data (clusterloss.app.results)
# Everything `train`, `evaluate` and `index build` write (what --overwrite deletes).
RUN_FILES = (
    "model.keras", "metrics.json", "embeddings.npz", "features.png", "history.png", "roc.png",
    "neighbors.png", "neighbors_unseen.png", "report.html", FILES,
)  # fmt: skip
RUN_FOLDERS = (INDEX, LOGS, CHECKPOINT, "export")
TEMPORARY = re.compile(r"\.tmp-(\d+)-")  # the name `atomic_path` gives a temporary


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
        """Hold the run directory for the block; `create` it if needed (else a missing one
        is a `RunError`). A writer holds an exclusive `flock` on `RUN_DIR/.lock`, whose
        content (pid, host) only names the holder in messages: the kernel releases the lock
        when its process dies, so a lock file left by a killed writer, empty or not, never
        blocks the directory, and taking it over needs no guess about liveness. The holder
        deletes the file at the end; a taker that locked a file which was meanwhile deleted
        or replaced (its inode is no longer the path's) retries on the new file, so two
        writers never hold two different files. Another writer holding it: a `RunError`."""
        if not create and not self.path.is_dir():
            raise RunError(f"{self.path}: no such run directory")
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"--out {self.path} is a file, not a run directory; choose another --out")
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK
        handle = self._acquire(lock)
        try:
            left = handle.read().strip()
            if left:
                print(
                    f"clusterloss: {self.path}: taking over the lock of process "
                    f"{_holder(left).get('pid', '?')}, which no longer runs",
                    file=sys.stderr,
                )
            handle.seek(0)
            handle.truncate()
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
            handle.flush()
            self.remove_temporaries()
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()  # still flocked: a waiting taker sees another inode and retries
            handle.close()
            if created:  # a command that failed before writing anything leaves no folder
                with contextlib.suppress(OSError):
                    self.path.rmdir()

    def _acquire(self, lock: Path):
        """The open lock file, flocked by this process and still at `lock`."""
        while True:
            handle = open(lock, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise RunError(self._held_message(lock)) from None
            except BaseException:
                handle.close()
                raise
            try:
                same = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                handle.seek(0)
                return handle
            handle.close()

    def remove_temporaries(self) -> None:
        """Delete the temporaries (`.tmp-<pid>-*`) of writes killed midway: those of pids that
        no longer run, here and in the run's folders."""
        folders = [self.path] + [self.path / name for name in RUN_FOLDERS]
        for folder in folders:
            found = folder.rglob(".tmp-*") if folder != self.path else folder.glob(".tmp-*")
            for path in list(found):
                match = TEMPORARY.match(path.name)
                if match and int(match[1]) != os.getpid() and not _alive(int(match[1])):
                    if path.is_dir() and not path.is_symlink():  # a folder export's temporary
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            path.unlink()

    def holder(self) -> dict:
        """The pid and host the lock file names (empty if none can be read)."""
        try:
            return _holder((self.path / LOCK).read_text())
        except OSError:
            return {}

    def _held_message(self, lock: Path) -> str:
        holder = self.holder()
        return (
            f"{self.path} is in use by process {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')} ({lock}); wait for it to finish or stop it"
        )


def _holder(text: str) -> dict:
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
