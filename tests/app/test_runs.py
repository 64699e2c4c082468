"""A run directory's safety: no silent overwrite, `--overwrite` clears every derived file
(the index too), a stale index is refused, one writer at a time (a lock with the holder's
pid; a dead holder's lock is taken over), atomic writes, and a killed `train` resumed to
the same result as an uninterrupted one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import BACKEND, ExplodeWeights, fails
from synthetic import make_image_folder

from clusterloss.app.cli.args import config_from_args
from clusterloss.app.cli.main import build_parser, main
from clusterloss.app.errors import RunError
from clusterloss.app.rundir import RunDir, atomic_path
from clusterloss.app.runs import train

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--epochs", "1", "--train-limit", "200", "--test-limit", "100", "--embedding-dim", "4",
        "--verbose", "0", "--no-evaluate"]  # fmt: skip


def test_refuse_then_overwrite_clears_every_derived_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert main(["index", "build", str(out), "--verbose", "0"]) == 0
    (out / "notes.txt").write_text("mine")  # not clusterloss's: never deleted
    (out / "report.html").write_text("an old report")
    before = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    err = fails(capsys, "train", *TINY, "--out", str(out), "--seed", "1")
    assert f"{out} already holds a run (model.keras, metrics.json" in err and "--overwrite" in err
    assert json.loads((out / "metrics.json").read_text()) == before  # untouched
    assert main(["train", *TINY, "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert not (out / "index").exists() and not (out / "report.html").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "metrics.json").read_text())["seed"] == 1


def test_stale_index_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert main(["index", "build", str(out), "--verbose", "0"]) == 0
    assert main(["search", str(out), "-q", "test:0", "--json"]) == 0
    capsys.readouterr()
    model = keras.saving.load_model(out / "model.keras")  # a different model.keras appears
    layer = model.backbone.get_layer("features")
    layer.set_weights([w + 1.0 for w in layer.get_weights()])
    model.save(out / "model.keras")
    err = fails(capsys, "search", str(out), "-q", "test:0")
    assert "index was built from another model.keras" in err and "clusterloss index build" in err
    assert main(["index", "build", str(out), "--verbose", "0"]) == 0
    assert main(["search", str(out), "-q", "test:0"]) == 0


HOLDER = (
    "import fcntl, json, os, socket, sys, time\n"
    "handle = open(sys.argv[1], 'a+')\n"
    "fcntl.flock(handle, fcntl.LOCK_EX)\n"
    "json.dump({'pid': os.getpid(), 'host': socket.gethostname()}, handle)\n"
    "handle.flush()\n"
    "print('locked', flush=True)\n"
    "time.sleep(60)\n"
)


def test_one_writer_at_a_time(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        lock = {"pid": holder.pid, "host": socket.gethostname()}
        err = fails(capsys, "train", *TINY, "--out", str(out))
        assert f"{out} is in use by process {holder.pid}" in err
        assert json.loads((out / ".lock").read_text()) == lock  # still the holder's
        assert not (out / "metrics.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over, with a warning
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert f"taking over the lock of process {holder.pid}, which no longer runs" in capsys.readouterr().err
    assert not (out / ".lock").exists() and (out / "metrics.json").is_file()


def _finished_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_stale_lock_is_taken_over_by_exactly_one_writer(tmp_path):
    """8 writers race for the lock of a dead process: one gets in, 7 are refused (before,
    a slower taker deleted the faster one's fresh lock: up to 5 inside at once)."""
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    lock = run_dir / ".lock"
    writers = 8
    for _ in range(5):
        lock.write_text(json.dumps({"pid": _finished_pid(), "host": socket.gethostname()}))
        start, tried = threading.Barrier(writers), threading.Barrier(writers)
        inside, refused = [], []

        def writer():
            start.wait()
            try:
                with run_dir.lock():
                    inside.append(1)
                    tried.wait()  # stay inside until every writer has tried
            except RunError as error:
                refused.append(str(error))
                tried.wait()

        threads = [threading.Thread(target=writer) for _ in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert (len(inside), len(refused)) == (1, writers - 1), (inside, refused)
        assert all("is in use by process" in message for message in refused)
        assert not lock.exists()


def test_an_empty_lock_and_killed_temporaries_do_not_block(tmp_path, capsys):
    """A lock file left empty (killed between create and write) does not block the directory
    for ever; temporaries of killed writes go when the lock is taken."""
    run_dir = RunDir(tmp_path / "run")
    (run_dir.path / "checkpoint").mkdir(parents=True)
    (run_dir / ".lock").write_text("")
    dead = _finished_pid()
    stale = [run_dir / f".tmp-{dead}-model.keras", run_dir / "checkpoint" / f".tmp-{dead}-epoch-2.weights.h5"]
    live = run_dir / f".tmp-{os.getpid()}-metrics.json"  # this process's: kept
    for path in stale + [live]:
        path.write_text("half")
    with run_dir.lock():
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
        assert [p.exists() for p in stale] == [False, False] and live.exists()
    assert not (run_dir / ".lock").exists()


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    with atomic_path(path) as temporary:
        assert temporary.parent == tmp_path and temporary.name.endswith("metrics.json")
        temporary.write_text("new")
    assert path.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


RESUMED = ["train", "--loss", "center", "--epochs", "4", "--train-limit", "300", "--val-split",
           "0.2", "--embedding-dim", "4", "--verbose", "0", "--no-evaluate"]  # fmt: skip
KILLER = textwrap.dedent("""
    import os, signal, sys, keras
    from clusterloss.app.cli.args import config_from_args
    from clusterloss.app.cli.main import build_parser
    from clusterloss.app.runs import train

    class Kill(keras.callbacks.Callback):  # after the checkpoint of epoch 2 is written
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    args = build_parser().parse_args(sys.argv[1:])
    train(config_from_args(args, args.loss, args.seed, args.out), callbacks=[Kill()])
""")


def _killed(argv: list[str], out: Path) -> dict:
    """Run `train argv --out out` in a process killed after epoch 2; its checkpoint."""
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, *argv, "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": BACKEND},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]["loss"]) == 2
    assert (out / ".lock").is_file()  # left by the killed process
    return state


def _resumed_equals_whole(tmp_path: Path, capsys, argv: list[str], state: dict) -> None:
    """`--resume` the killed run in tmp_path/resumed (checkpoint `state`) and train the
    same run uninterrupted: the same history and metrics; train_seconds counts both parts."""
    resumed = tmp_path / "resumed"
    assert main([*argv, "--out", str(resumed), "--resume"]) == 0
    assert "taking over the lock" in capsys.readouterr().err
    args = build_parser().parse_args([*argv, "--out", str(tmp_path / "whole")])
    train(config_from_args(args, args.loss, args.seed, args.out))
    a = json.loads((resumed / "metrics.json").read_text())
    b = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    for key in ("knn_accuracy", "test_accuracy", "intra_inter_ratio", "best_val_map_at_r"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert a["best_epoch"] == b["best_epoch"]
    for key, values in b["history"].items():
        np.testing.assert_allclose(a["history"][key], values, atol=1e-6, err_msg=key)
    assert not (resumed / "checkpoint").exists()
    assert 0 < state["train_seconds"] < a["train_seconds"]  # the epochs before the kill too


def test_killed_run_resumes_to_the_same_result(tmp_path, capsys):
    """Observed: identical to the last digit on JAX, TensorFlow and PyTorch (CPU)."""
    resumed = str(tmp_path / "resumed")
    state = _killed(RESUMED, tmp_path / "resumed")
    err = fails(capsys, *RESUMED, "--out", resumed, "--seed", "1", "--resume")
    assert "--resume continues" in err and "seed 0 (now 1)" in err
    # As an older version wrote it: without settings added since (they resume at their defaults)
    path = tmp_path / "resumed" / "checkpoint" / "state.json"
    older = json.loads(path.read_text())
    del older["config"]["patience"], older["config"]["options"]["center_lr"]
    path.write_text(json.dumps(older))
    _resumed_equals_whole(tmp_path, capsys, RESUMED, state)
    err = fails(capsys, *RESUMED, "--out", resumed, "--resume")
    assert "holds no checkpoint to resume" in err


def test_killed_folder_run_resumes_to_the_same_result(tmp_path, capsys):
    """An image folder read as `train` reads it (all cores, batches read ahead across the
    end of each epoch): the resumed run equals the uninterrupted one (was: Keras's
    `workers` read batches ahead under the wrong epoch, test accuracy 0.7792 vs 0.7833).
    Batches of 2: more batches per epoch than Keras's queue (10) held, which failed then
    (intra_inter_ratio 0.1381 vs 0.1344). A file removed, added or changed before the
    resume is refused."""
    photos = tmp_path / "photos"
    make_image_folder(photos, classes=4, per_class=20, size=12)
    argv = ["train", "--data", str(photos), "--loss", "softmax", "--image-size", "12", "--epochs", "4",
            "--batch-size", "2", "--val-split", "0.25", "--embedding-dim", "4", "--verbose", "0",
            "--no-evaluate"]  # fmt: skip
    state = _killed(argv, tmp_path / "resumed")
    resume = [*argv, "--out", str(tmp_path / "resumed"), "--resume"]
    image, moved = photos / "class_1" / "img_004.png", photos / "class_1" / "new.png"
    image.rename(moved)
    assert "(added class_1/new.png; removed class_1/img_004.png)" in fails(capsys, *resume)
    moved.rename(image)  # as it was (a rename keeps the modification time)
    changed = photos / "class_2" / "img_000.png"
    original, stat = changed.read_bytes(), changed.stat()
    changed.write_bytes(image.read_bytes())
    assert "(changed class_2/img_000.png)" in fails(capsys, *resume)
    changed.write_bytes(original)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _resumed_equals_whole(tmp_path, capsys, argv, state)


def test_diverged_training_stops_with_a_hint(tmp_path):
    """Not the evaluation's "`queries` must be finite": the run says that training diverged,
    where, and what to change."""
    args = build_parser().parse_args(["train", *TINY, "--out", str(tmp_path / "r")])
    with pytest.raises(
        RunError,
        match=r"training diverged: the loss became nan at epoch 1, "
        r"batch 3, so nothing was evaluated; lower --learning-rate",
    ):
        train(config_from_args(args, args.loss, args.seed, args.out), callbacks=[ExplodeWeights()])
    assert not (tmp_path / "r" / "metrics.json").exists()
