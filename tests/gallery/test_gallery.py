"""`clusterloss.Gallery` (SQLite source of truth, derived index, enrolment) and its open-set
calibration, against NumPy loops written here; crashes and concurrent writers in
subprocesses. No model runs here (the CLI paths are in app/test_recognition.py)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from clusterloss.gallery import Calibration, CalibrationError, Gallery
from clusterloss.gallery.calibration import calibrate, probe_scores

DIM = 16


def clusters(rng, classes, per, spread=0.35, dim=DIM, centers=None):
    centers = np.random.default_rng(99).normal(size=(64, dim)) if centers is None else centers
    y = np.repeat(np.asarray(classes), per)
    return (centers[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32), y


def names(y):
    return [f"p{int(i)}" for i in y]


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_stranger_scores(gallery_x, gallery_y, probe_x, probe_y):
    """Per probe, the best cosine to a gallery item of another class: a plain loop."""
    g, p = unit(gallery_x.astype(np.float64)), unit(probe_x.astype(np.float64))
    return np.array(
        [max(float(p[i] @ g[j]) for j in range(len(g)) if gallery_y[j] != probe_y[i]) for i in range(len(p))]
    )


def test_search_add_remove_reenrol_match_a_loop(tmp_path):
    rng = np.random.default_rng(0)
    x, y = clusters(rng, range(6), 5)
    gallery = Gallery(tmp_path / "g.sqlite", dim=DIM)
    ids = gallery.add(x, names(y), paths=[f"/faces/{i}.png" for i in range(len(y))])
    assert ids.tolist() == list(range(1, 31)) and len(gallery) == 30 and gallery.class_names == names(range(6))
    q, _ = clusters(rng, range(6), 2)

    def nearest(gx, gy):  # the reference: cosine argmax, ties to the lower position
        sims = unit(q.astype(np.float64)) @ unit(gx.astype(np.float64)).T
        return [names([gy[j]])[0] for j in sims.argmax(1)], sims.max(1)

    want, best = nearest(x, y)
    found = gallery.search(q, k=3)
    assert [a["prediction"] for a in found] == want  # no calibration: always a class
    assert np.allclose([a["score"] for a in found], best, atol=1e-5)
    assert all(a["neighbors"][0]["path"] == f"/faces/{a['neighbors'][0]['id'] - 1}.png" for a in found)
    assert gallery.remove(classes=["p2"]) == 5 and "p2" not in gallery.class_names
    keep = y != 2
    assert [a["prediction"] for a in gallery.search(q, k=1)] == nearest(x[keep], y[keep])[0]
    assert gallery.remove(paths=["/faces/0.png", "/faces/1.png"]) == 2 and len(gallery) == 23
    again = gallery.add(x[y == 2], "p2")  # re-enrolled: new ids, the same answers as before
    assert again.min() == 31 and [a["prediction"] for a in gallery.search(q[4:6], k=1)] == want[4:6]
    gallery.flush()
    reopened = Gallery(tmp_path / "g.sqlite")  # from the cache file: the same gallery
    assert len(reopened) == 28 and sorted(reopened.class_names) == names(range(6))
    assert [a["prediction"] for a in reopened.search(q, k=1)] == [a["prediction"] for a in gallery.search(q, k=1)]


def test_calibration_equals_a_loop_and_holds_on_fresh_strangers():
    rng = np.random.default_rng(1)
    x, y = clusters(rng, range(40), 6)
    probes, probe_y = clusters(rng, range(40), 5)  # 200 probes: FAR 0.01 is estimable
    gallery = Gallery(dim=DIM)
    gallery.add(x, names(y))
    result = gallery.calibrate(probes, names(probe_y), far=0.01)
    stranger = np.sort(reference_stranger_scores(x, y, probes, probe_y))[::-1]
    assert result.note is None and result.num_strangers == 200 and result.num_mated == 200
    assert stranger[2] < result.threshold <= stranger[1] + 1e-6  # 2 of 200 may pass: FAR 0.01
    assert result.far == pytest.approx(2 / 200)
    # the accept rate of enrolled people, by a loop: nearest item of the right class, passing
    sims = unit(probes.astype(np.float64)) @ unit(x.astype(np.float64)).T
    right = (y[sims.argmax(1)] == probe_y) & (sims.max(1) >= result.threshold)
    assert result.tar == pytest.approx(right.mean(), abs=1e-9)
    # a fresh draw of people never enrolled: rejected at the chosen rate (binomial, 4 sigma)
    strangers, _ = clusters(np.random.default_rng(2), range(40, 64), 25)
    accepted = np.mean([a["known"] for a in gallery.search(strangers, k=1)])
    assert accepted <= 0.01 + 4 * np.sqrt(0.01 * 0.99 / 600) + 0.01
    assert Calibration.from_dict(result.to_dict()) == result and "<- chosen" in result.format_table()
    gallery.set_threshold(0.99)  # by hand: stricter, so fewer of the enrolled probes pass
    assert gallery.calibration.summary() == "unknown below cosine 0.990000 (set by hand, not measured)"
    assert np.mean([a["known"] for a in gallery.search(probes, k=1)]) == pytest.approx(np.mean(sims.max(1) >= 0.99))
    gallery.set_threshold(None)
    assert gallery.threshold is None and all(a["known"] for a in gallery.search(strangers, k=1))


def test_small_data_gets_the_smallest_estimable_far_and_said_so():
    rng = np.random.default_rng(3)
    x, y = clusters(rng, range(30), 6)
    probes, probe_y = clusters(rng, range(30), 2)  # 60 probes: FAR 0.01 cannot be estimated
    gallery = Gallery(dim=DIM)
    gallery.add(x, names(y))
    result = gallery.calibrate(probes, names(probe_y))
    stranger = np.sort(reference_stranger_scores(x, y, probes, probe_y))[::-1]
    assert result.far == pytest.approx(1 / 60) and stranger[1] < result.threshold <= stranger[0]
    assert "needs >= 100 stranger trials, the probes give 60" in result.note
    # a TAR target instead: the strictest threshold accepting 90% of the enrolled probes
    result = gallery.calibrate(probes, names(probe_y), far=None, tar=0.9)
    assert result.tar >= 0.9 and result.target == {"tar": 0.9}


def test_unreachable_and_collapsed_thresholds_are_refused():
    angles = np.repeat([0.0, 0.0, 1.0], 4)  # classes 0 and 1 on one ray: cosine 1.0 apart
    x = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32) * np.linspace(1, 2, 12)[:, None]
    labels = np.repeat([0, 1, 2], 4)
    scores = probe_scores(_index(x, labels), x, labels)
    with pytest.raises(
        CalibrationError, match=r"no cosine threshold reaches FAR 0\.1: 8 of 12 stranger trials score 1\.0.*2-D"
    ):
        calibrate(scores, "cosine", far=0.1)
    collapsed = np.ones((10, 4), np.float32)
    scores = probe_scores(_index(collapsed, np.arange(10) % 2), collapsed, np.arange(10) % 2)
    with pytest.raises(CalibrationError, match="collapsed"):
        calibrate(scores, "cosine", far=0.1)
    gallery = Gallery(dim=2)
    gallery.add(x, names(labels))
    with pytest.raises(CalibrationError, match="score 1.0"):
        gallery.calibrate(x, names(labels), far=0.1)
    assert gallery.threshold is None and "score 1.0" in gallery.stats()["calibration_error"]


def _index(x, labels):
    from clusterloss.index import Index

    index = Index(x.shape[1], backend="numpy")
    return index.add(x, labels=labels, ids=np.arange(1, len(x) + 1))


def test_enrolment_recalibrates_and_euclidean_rejects_above():
    rng = np.random.default_rng(4)
    x, y = clusters(rng, range(20), 6)
    probes, probe_y = clusters(rng, range(20), 3)
    gallery = Gallery(dim=DIM, metric="euclidean")
    gallery.add(x, names(y))
    first = gallery.calibrate(probes, names(probe_y), far=0.05)
    assert first.summary().startswith("unknown above euclidean")
    stranger = np.sort(
        [min(np.linalg.norm(probes[i] - x[j]) for j in range(len(x)) if y[j] != probe_y[i]) for i in range(len(probes))]
    )
    assert stranger[2] < first.threshold <= stranger[3] + 1e-5  # 3 of 60 strangers are closer
    newcomers, new_y = clusters(rng, range(20, 25), 6)
    gallery.add(newcomers, names(new_y))  # recalibrated on the stored probes
    assert gallery.calibration.num_strangers == 60 and gallery.calibration is not first
    found = gallery.search(clusters(rng, range(20, 25), 2)[0], k=1)
    assert all(a["known"] == (a["score"] <= gallery.threshold) for a in found)


def test_bad_inputs_name_the_argument(tmp_path):
    gallery = Gallery(dim=4)
    with pytest.raises(ValueError, match="gallery is empty"):
        gallery.search(np.zeros((1, 4)), k=1)
    with pytest.raises(ValueError, match=r"`embeddings` must have 4 columns"):
        gallery.add(np.zeros((2, 3)), "a")
    with pytest.raises(ValueError, match=r"`embeddings` must be finite"):
        gallery.add(np.full((1, 4), np.nan), "a")
    with pytest.raises(ValueError, match="'unknown' is the open-set answer"):
        gallery.add(np.ones((1, 4)), "unknown")
    with pytest.raises(ValueError, match=r"one per embedding \(2\); got 3"):
        gallery.add(np.ones((2, 4)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="needs `classes`, `paths` or `ids`"):
        gallery.remove()
    with pytest.raises(ValueError, match=r"`far` must be in \(0\.0, 1\.0\]; got 0"):
        gallery.calibrate(np.ones((2, 4)), ["a", "b"], far=0)
    assert len(gallery) == 0
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(ValueError, match="junk.sqlite: not a clusterloss gallery"):
        Gallery(tmp_path / "junk.sqlite")
    with pytest.raises(FileNotFoundError, match="no such gallery"):
        Gallery(tmp_path / "none.sqlite")


def test_other_processes_changes_and_stale_caches(tmp_path):
    path = tmp_path / "g.sqlite"
    rng = np.random.default_rng(5)
    x, y = clusters(rng, range(4), 5)
    reader = Gallery(path, dim=DIM)
    writer = Gallery(path)
    writer.add(x, names(y))
    writer.flush()
    assert len(reader) == 0 and reader.refresh() and len(reader) == 20 and not reader.refresh()
    writer.remove(classes="p0")  # a removal: the old cache no longer fits
    writer.add(x[:2], "p9")
    assert reader.refresh() and len(reader) == 17 and sorted(reader.class_names) == ["p1", "p2", "p3", "p9"]
    # the cache on disk is from before the removal: a new reader rebuilds from the database
    assert [f for f in os.listdir(tmp_path) if f.endswith(".index")] == ["g.sqlite.flat.g2.index"]
    fresh = Gallery(path)
    assert len(fresh) == 17 and fresh.search(x[:1], 1)[0]["prediction"] == "p9"
    copy = writer.save(tmp_path / "copy.sqlite")
    assert len(copy) == 17 and copy.class_names == writer.class_names
    with pytest.raises(FileExistsError):
        writer.save(tmp_path / "copy.sqlite")


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from clusterloss.gallery.gallery import Gallery
    gallery = Gallery(sys.argv[1], timeout=60)
    tag, batches, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for b in range(batches):
        gallery.add(np.random.default_rng(b).normal(size=(size, 8)).astype("float32"), f"{tag}{b}")
        print(b, flush=True)
""")


def _writer(path, tag, batches, size):
    env = {**os.environ, "CLUSTERLOSS_DISABLE_FAISS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), tag, str(batches), str(size)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _check_whole_batches(path, size):
    """Every class holds a whole batch of consecutive ids: no add was cut or interleaved."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT c.name, MIN(i.id), MAX(i.id), COUNT(*) FROM items i "
            "JOIN classes c ON c.id = i.class_id GROUP BY c.name"
        ).fetchall()
    for name, low, high, count in rows:
        assert count == size and high - low + 1 == size, (name, low, high, count)
    return len(rows)


def test_kill_during_add_leaves_the_gallery_before_or_after(tmp_path):
    path = tmp_path / "g.sqlite"
    Gallery(path, dim=8).close()
    writer = _writer(path, "a", 1000, 20000)
    assert writer.stdout.readline().strip() == "0"  # the first add committed
    time.sleep(0.3)  # well inside a later 20,000-row add
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    batches = _check_whole_batches(path, 20000)
    gallery = Gallery(path)
    assert batches >= 1 and len(gallery) == 20000 * batches
    assert gallery.search(np.ones((1, 8)), 1)[0]["prediction"].startswith("a")


def test_two_writers_never_interleave(tmp_path):
    path = tmp_path / "g.sqlite"
    Gallery(path, dim=8).close()
    writers = [_writer(path, tag, 15, 300) for tag in ("a", "b")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    assert _check_whole_batches(path, 300) == 30 and len(Gallery(path)) == 9000
