"""Index (FAISS and the NumPy fallback) and KNNClassifier."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import clusterloss.index.index as index_module
from clusterloss.index import Index, KNNClassifier, faiss_available

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="FAISS not installed")
BACKENDS = ["numpy", pytest.param("faiss", marks=needs_faiss)]


def _clustered(rng, n, dim=16, classes=20, spread=0.5):
    centers = np.random.default_rng(99).normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    return (centers[y] + spread * rng.normal(size=(n, dim))).astype("float32"), y


def _brute(q, x, k, metric):
    q, x = q.astype("float64"), x.astype("float64")
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        scores = q @ x.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.fixture(params=["small searches on NumPy", "every search on FAISS"])
def search_path(request, monkeypatch):
    """Both paths of an exact FAISS index: searches of at most `_SMALL_SEARCH` scores run on
    NumPy (FAISS's threads cost more than the arithmetic), larger ones on FAISS."""
    if request.param == "every search on FAISS":
        monkeypatch.setattr("clusterloss.index.index._SMALL_SEARCH", 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_search_equals_brute_force(backend, metric, search_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 12)).astype("float32")
    q = rng.normal(size=(50, 12)).astype("float32")
    index = Index(12, metric=metric, backend=backend)
    index.add(x[:300])
    index.add(x[300:])  # incremental
    assert len(index) == 700
    for k in (1, 10, 700):
        scores, idx = index.search(q, k, batch_size=16)
        want_scores, want_idx = _brute(q, x, k, metric)
        np.testing.assert_array_equal(idx[:, :10], want_idx[:, :10])
        np.testing.assert_allclose(scores, want_scores, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ties_go_to_the_lower_position(backend, metric, search_path):
    # Every stored vector is one of two points, so scores tie in big groups.
    x = np.zeros((60, 3), "float32")
    x[::2] = [1.0, 0.0, 0.0]
    x[1::2] = [0.0, 1.0, 0.0]
    q = np.tile(np.array([[1.0, 0.2, 0.0]], "float32"), (25, 1))  # nearer the even rows
    index = Index(3, metric=metric, backend=backend)
    index.add(x)
    for k in (3, 30, 35, 60):
        _, idx = index.search(q, k, batch_size=7)
        want = np.concatenate([np.arange(0, 60, 2), np.arange(1, 60, 2)])[:k]
        np.testing.assert_array_equal(idx, np.tile(want, (25, 1)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_larger_than_index_pads(backend):
    index = Index(2, metric="euclidean", backend=backend)
    index.add(np.array([[0.0, 0.0], [1.0, 0.0]]))
    scores, idx = index.search(np.array([[0.1, 0.0]]), 4)
    np.testing.assert_array_equal(idx, [[0, 1, -1, -1]])
    np.testing.assert_allclose(scores[0, :2], [0.1, 0.9], atol=1e-6)
    assert np.isinf(scores[0, 2:]).all()


@needs_faiss
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_numpy_fallback_equals_faiss(monkeypatch, caplog, metric):
    rng = np.random.default_rng(1)
    x, _ = _clustered(rng, 3000)
    q, _ = _clustered(rng, 200)
    with_faiss = Index(16, metric=metric)
    with_faiss.add(x)
    assert with_faiss.backend == "faiss"
    monkeypatch.setattr(index_module, "_load_faiss", lambda: None)
    monkeypatch.setattr(index_module, "_warned_numpy", False)
    with caplog.at_level("WARNING", logger="clusterloss.index"):
        fallback = Index(16, metric=metric)
        Index(16, metric=metric)  # said once per process only
    assert [r.getMessage() for r in caplog.records] == [
        "clusterloss: FAISS is not installed; exact NumPy search (same results, slower): "
        "pip install 'clusterloss[faiss]' for speed"
    ]
    assert fallback.backend == "numpy"
    fallback.add(x)
    s1, i1 = with_faiss.search(q, 10)
    s2, i2 = fallback.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-5)


def test_missing_faiss_is_one_line_once():
    """As a command says it: one line on stderr, no source line, however many indexes."""
    script = "import numpy as np, clusterloss as cl; cl.Index(4).add(np.ones((2, 4))); cl.Index(4)"
    env = {**os.environ, "CLUSTERLOSS_DISABLE_FAISS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    said = [line for line in done.stderr.splitlines() if "faiss" in line.lower() or "Index(" in line]
    assert said == [
        "clusterloss: FAISS is not installed; exact NumPy search (same results, "
        "slower): pip install 'clusterloss[faiss]' for speed"
    ], done.stderr


def test_env_var_forces_numpy(monkeypatch):
    monkeypatch.setenv("CLUSTERLOSS_DISABLE_FAISS", "1")
    monkeypatch.setattr(index_module, "_faiss_checked", False)
    monkeypatch.setattr(index_module, "_faiss_module", None)
    monkeypatch.setattr(index_module, "_warned_numpy", True)
    assert not faiss_available()
    assert Index(4).backend == "numpy"


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_round_trip(tmp_path, backend):
    rng = np.random.default_rng(2)
    x, y = _clustered(rng, 500)
    ids = rng.permutation(10_000)[:500]
    index = Index(16, metric="euclidean", backend=backend)
    index.add(x[:200], y[:200], ids[:200])
    index.add(x[200:], y[200:], ids[200:])
    path = tmp_path / "refs.index"
    index.save(path)
    assert path.exists()
    loaded = Index.load(path, backend=backend)
    assert (loaded.dim, loaded.metric, loaded.kind, len(loaded)) == (16, "euclidean", "flat", 500)
    np.testing.assert_array_equal(loaded.labels, y)
    np.testing.assert_array_equal(loaded.ids, ids)
    q = x[:40] + 0.01
    for a, b in zip(index.search(q, 5), loaded.search(q, 5)):
        np.testing.assert_array_equal(a, b)
    numpy_loaded = Index.load(path, backend="numpy")  # an exact index loads on either backend
    np.testing.assert_array_equal(numpy_loaded.search(q, 5)[1], index.search(q, 5)[1])


@needs_faiss
@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_recall_and_round_trip(tmp_path, kind):
    rng = np.random.default_rng(3)
    x, y = _clustered(rng, 4000, dim=24, classes=40, spread=0.3)
    q, _ = _clustered(rng, 200, dim=24, classes=40, spread=0.3)
    exact = Index(24)
    exact.add(x)
    approx = Index(24, kind=kind)
    approx.add(x, y)
    _, truth = exact.search(q, 10)
    _, found = approx.search(q, 10)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(found, truth)])
    assert recall > 0.9
    approx.save(tmp_path / "approx.index")
    loaded = Index.load(tmp_path / "approx.index")
    assert loaded.kind == kind and len(loaded) == 4000
    np.testing.assert_array_equal(loaded.search(q, 10)[1], found)
    np.testing.assert_array_equal(loaded.labels, y)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_knn_classifier_matches_sklearn(metric, weights):
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(4)
    x, y = _clustered(rng, 600, dim=8, classes=6, spread=1.5)
    q, yq = _clustered(rng, 150, dim=8, classes=6, spread=1.5)
    y, yq = y * 3 + 1, yq * 3 + 1  # non-contiguous class ids
    ours = KNNClassifier(k=7, weights=weights, metric=metric).fit(x, y)
    theirs = KNeighborsClassifier(n_neighbors=7, weights=weights, metric=metric).fit(x, y)
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    np.testing.assert_allclose(ours.predict_proba(q), theirs.predict_proba(q), atol=1e-5)
    np.testing.assert_array_equal(ours.predict(q), theirs.predict(q))
    assert ours.score(q, yq) == pytest.approx(theirs.score(q, yq))
    distances, idx = ours.kneighbors(q[:5])
    want_d, want_i = theirs.kneighbors(q[:5])
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(distances, want_d, atol=1e-5)


def test_knn_classifier_exact_duplicate_takes_all_weight():
    x = np.array([[0.0], [1.0], [1.1]], "float32")
    clf = KNNClassifier(k=3, weights="distance").fit(x, [5, 7, 7])
    np.testing.assert_allclose(clf.predict_proba([[0.0]]), [[1.0, 0.0]])
    assert clf.predict([[0.0]])[0] == 5


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: Index(0), "`dim`"),
        (lambda: Index(4, metric="dot"), "`metric`"),
        (lambda: Index(4, kind="lsh"), "`kind`"),
        (lambda: Index(4, backend="gpu"), "`backend`"),
        (lambda: Index(4, kind="hnsw", backend="numpy"), "approximate"),
        (lambda: Index(4).add(np.zeros((3, 5))), "4 columns"),
        (lambda: Index(4).add(np.zeros(4)), "shape"),
        (lambda: Index(4).add(np.zeros((3, 4)), labels=[0, 1]), "same length"),
        (lambda: Index(4).search(np.zeros((1, 4)), 1), "empty"),
        (lambda: Index(4).add(np.full((3, 4), np.nan)), "`embeddings` must be finite"),
        (lambda: Index(4).add(np.eye(4)).search(np.full((1, 4), np.inf), 1), "`queries` must be finite"),
        (lambda: Index(4).add(np.zeros((3, 4))).search(np.zeros((1, 4)), 0), "`k`"),
        (lambda: Index(4).add(np.zeros((3, 4)), [0, 1, 2]).add(np.zeros((1, 4))), "every `add`"),
        (lambda: KNNClassifier(k=0), "`k`"),
        (lambda: KNNClassifier(weights="rank"), "`weights`"),
        (lambda: KNNClassifier(k=5).fit(np.zeros((3, 2)), [0, 1, 2]), "`k`"),
        (lambda: KNNClassifier(k=1).fit(np.zeros((3, 2)), [0, 1]), "same length"),
        (lambda: KNNClassifier(k=1).predict(np.zeros((3, 2))), "not fitted"),
        (lambda: KNNClassifier(k=1).fit(np.zeros((3, 2)), [0, 1, 2]).predict(np.zeros((1, 3))), "2 columns"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_progress_bar_when_verbose(capsys, backend):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 4)).astype("float32")
    index = Index(4, backend=backend, batch_size=2, verbose=True)  # adds in steps of 2 * 64
    index.add(x)
    index.search(x[:50], 3, batch_size=8)
    out = capsys.readouterr().out
    assert "300/300" in out and "50/50" in out
    index.search(x[:50], 3, batch_size=8, verbose=False)
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- padding, damage


def _vote_reference(idx, labels, classes):
    """Majority vote over the neighbours that were found (position >= 0), ties to the
    smallest class: a plain loop."""
    out = []
    for row in idx:
        counts = {}
        for j in row:
            if j >= 0:
                counts[labels[j]] = counts.get(labels[j], 0) + 1
        best = max(counts.values())
        out.append(min(c for c, n in counts.items() if n == best))
    return np.array(out)


def test_knn_ignores_padding_of_a_short_result(monkeypatch):
    """An approximate index pads missing neighbours with position -1: `labels[-1]` (the last
    item's class) must not vote."""
    x = np.eye(4, dtype="float32")
    y = np.array([0, 0, 1, 2])  # the last item is the only one of class 2
    clf = KNNClassifier(k=3, metric="cosine").fit(x, y)
    idx = np.array([[0, -1, -1], [2, 0, -1], [1, 0, 2]])
    scores = np.where(idx >= 0, 0.9, -np.inf).astype("float32")
    monkeypatch.setattr(clf.index_, "search", lambda *a, **k: (scores, idx))
    np.testing.assert_array_equal(clf.predict(x[:3]), _vote_reference(idx, y, 3))
    np.testing.assert_allclose(clf.predict_proba(x[:3]), [[1, 0, 0], [0.5, 0.5, 0], [2 / 3, 1 / 3, 0]])


def test_knn_query_with_no_neighbour_found_is_an_error(monkeypatch):
    x = np.eye(3, dtype="float32")
    clf = KNNClassifier(k=2, metric="cosine").fit(x, [0, 1, 2])
    idx = np.array([[1, 0], [-1, -1]])
    monkeypatch.setattr(clf.index_, "search", lambda *a, **k: (np.zeros((2, 2), "float32"), idx))
    with pytest.raises(ValueError, match="found no neighbour for 1 of 2 queries.*nprobe"):
        clf.predict(x[:2])


@needs_faiss
def test_knn_on_ivf_with_one_probe_votes_only_found_neighbours():
    rng = np.random.default_rng(7)
    x, y = _clustered(rng, 2000, dim=8, classes=10, spread=0.6)
    q, _ = _clustered(rng, 300, dim=8, classes=10, spread=0.6)
    clf = KNNClassifier(k=60, metric="cosine", kind="ivf", nlist=40, nprobe=1).fit(x, y)
    _, idx = clf.kneighbors(q)
    assert (idx < 0).any(), "the test needs short result lists"
    keep = (idx >= 0).any(axis=1)
    classes = clf.classes_
    encoded = np.searchsorted(classes, y)
    expected = classes[_vote_reference(idx[keep], encoded, len(classes))]
    np.testing.assert_array_equal(clf.predict(q[keep]), expected)


def _write_npz(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("random_bytes", "is not a clusterloss Index file"),
        ("truncated", "is not a clusterloss Index file"),
        ("pickled", "is not a clusterloss Index file"),
        ("no_config", r"no config"),
        ("label_count", r"inconsistent: labels of shape \(3,\)"),
        ("vector_dim", r"inconsistent: vectors of shape"),
        pytest.param("faiss_blob", "damaged clusterloss Index file", marks=needs_faiss),
    ],
)
def test_loading_a_damaged_index_file_names_the_file(tmp_path, damage, message):
    good = tmp_path / "good.index"
    index = Index(4, backend="numpy")
    index.add(np.eye(4, dtype="float32") + 0.1, labels=[0, 1, 2, 3])
    index.save(good)
    bad = tmp_path / "bad.index"
    with np.load(good) as saved:
        arrays = dict(saved)
    if damage == "random_bytes":
        bad.write_bytes(np.random.default_rng(0).bytes(300))
    elif damage == "truncated":
        bad.write_bytes(good.read_bytes()[:200])
    elif damage == "pickled":
        arrays["labels"] = np.array([{"a": 1}] * 4, dtype=object)
        with open(bad, "wb") as handle:
            np.savez(handle, **arrays)
    elif damage == "no_config":
        _write_npz(bad, vectors=arrays["vectors"])
    elif damage == "label_count":
        _write_npz(bad, **{**arrays, "labels": arrays["labels"][:3]})
    elif damage == "vector_dim":
        _write_npz(bad, **{**arrays, "vectors": arrays["vectors"][:, :3]})
    else:
        hnsw = Index(4, kind="hnsw")
        hnsw.add(np.eye(4, dtype="float32"))
        hnsw.save(good)
        with np.load(good) as saved:
            arrays = dict(saved)
        arrays["faiss_index"] = arrays["faiss_index"][:40]
        _write_npz(bad, **arrays)
    with pytest.raises(ValueError, match=message) as info:
        Index.load(bad)
    assert "bad.index" in str(info.value)
