"""`clusterloss serve`: the real server (uvicorn on 127.0.0.1, a free port, in a thread) over
a tiny trained image run: search, enrol and remove over HTTP, malformed and oversized
requests, the token, concurrent clients with enrolment under load, and the page in headless
Chromium (Playwright). The service is tested on the JAX backend; its model call on every
backend (`test_embedder_matches_the_model`), and its micro-batching without a server."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from helpers import BACKEND
from synthetic import make_image_folder

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install 'clusterloss[serve]'")
uvicorn = pytest.importorskip("uvicorn")

from clusterloss.app.serve.batcher import Batcher, Busy  # noqa: E402
from clusterloss.models.embedder import Embedder  # noqa: E402

TOKEN = "test-token"
MAX_BYTES = 256 * 1024
CHROMIUM = "/usr/bin/chromium"
server_test = pytest.mark.skipif(
    BACKEND != "jax",
    reason="the HTTP service is tested once, on JAX; its model call on every backend "
    "by test_embedder_matches_the_model",
)


def test_embedder_matches_the_model():
    """The compiled call (padded to a batch size, split past max_batch) gives `predict`'s
    embeddings, batch norm in inference mode."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    backbone = keras.Model(inputs, keras.layers.Dense(5)(x))
    images = np.random.default_rng(0).random((11, 8, 8, 3), dtype=np.float32)
    embedder = Embedder(backbone, max_batch=4)
    assert embedder.warm_up() > 0
    expected = backbone.predict(images, verbose=0)
    np.testing.assert_allclose(embedder(images), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(embedder(images[:3]), expected[:3], rtol=1e-5, atol=1e-5)
    assert embedder(images[:0]).shape == (0, 5)


class FakeGallery:
    """What `Batcher` searches: each query's neighbours are its first value, k times; a
    query of 9 is an error."""

    def refresh(self) -> bool:
        return False

    def search(self, queries: np.ndarray, k: int) -> list[dict]:
        if np.any(queries[:, 0] == 9):
            raise ValueError("no nines")
        return [{"prediction": "x", "neighbors": [float(q[0])] * k} for q in queries]


def test_batcher_serves_waiting_jobs_in_one_batch_and_refuses_past_its_queue():
    gates = {50.0: threading.Event(), 60.0: threading.Event()}  # a job of these values blocks the worker
    calls = []

    def embed(x):
        calls.append(len(x))
        if float(x.flat[0]) in gates:
            gates[float(x.flat[0])].wait(10)
        if np.any(x < 0):
            raise RuntimeError("bad batch")
        return x.reshape(len(x), -1)[:, :2]

    def hold(value: float):
        future = batcher.submit(np.full((1, 2), value))
        deadline = time.monotonic() + 10
        while batcher.waiting and time.monotonic() < deadline:  # the worker took it and waits
            time.sleep(0.01)
        return future

    batcher = Batcher(embed, FakeGallery(), max_batch=8, max_queue=3).start()
    first = hold(50.0)
    jobs = [batcher.submit(np.full((1, 2), i), k=i) for i in (1, 2)] + [batcher.submit(np.ones((2, 2)))]
    with pytest.raises(Busy, match="busy"):
        batcher.submit(np.zeros((1, 2)), k=1)
    gates[50.0].set()
    np.testing.assert_array_equal(first.result(10), [[50.0, 50.0]])
    assert [job.result(10)[0]["neighbors"] for job in jobs[:2]] == [[1.0], [2.0, 2.0]]
    np.testing.assert_array_equal(jobs[2].result(10), np.ones((2, 2)))
    assert calls == [1, 4]  # the three waiting jobs (four images): one model call

    hold(60.0)  # a failed search fails the searches of its batch, not its embeddings
    searches = [batcher.submit(np.full((1, 2), v), k=1) for v in (9, 5)]
    embedded = batcher.submit(np.full((1, 2), 4))
    gates[60.0].set()
    for future in searches:
        with pytest.raises(ValueError, match="no nines"):
            future.result(10)
    np.testing.assert_array_equal(embedded.result(10), [[4.0, 4.0]])
    with pytest.raises(RuntimeError, match="bad batch"):  # a failed embedding fails its batch
        batcher.submit(-np.ones((1, 2)), k=1).result(10)
    assert batcher.submit(np.full((1, 2), 3), k=1).result(10)[0]["neighbors"] == [3.0]  # goes on
    batcher.close()
    assert not batcher.alive and batcher.counts["refused"] == 1 and batcher.counts["largest_batch"] == 4


# ----------------------------------------------------------------------------- the server


def png(path: Path) -> bytes:
    return Path(path).read_bytes()


def multipart(fields: list[tuple[str, str | bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body: bytes are files, str text fields."""
    boundary = "clusterloss-test-7b1f"
    parts = []
    for name, value in fields:
        if isinstance(value, bytes):
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x.png"\r\n'
                f"Content-Type: image/png\r\n\r\n".encode()
                + value
                + b"\r\n"
            )
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


def call(server, method: str, path: str, body=None, headers=None, connection=None):
    """`(status, JSON or bytes)` of one request to the test server."""
    conn = connection or http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        if connection is None:
            conn.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(data)
    return response.status, data


def search(server, image: bytes, k: int = 3, connection=None):
    return call(server, "POST", "/search", *multipart([("image", image), ("k", str(k))]), connection=connection)


def enrol(server, name: str, images: list[bytes], token: str | None = TOKEN):
    body, headers = multipart([("name", name), *[("images", image) for image in images]])
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return call(server, "POST", "/enroll", body, headers)


def remove(server, name: str, token: str | None = TOKEN):
    return call(server, "DELETE", f"/classes/{name}", headers={"Authorization": f"Bearer {token}"} if token else {})


def files(root: Path, name: str) -> list[Path]:
    return sorted((root / name).glob("*.png"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A run trained on 6 classes of blobs, a gallery of classes 0-4 (class_5 is left to
    enrol), and the service on a free port of 127.0.0.1 (token required, 256 KiB bodies)."""
    if BACKEND != "jax":
        pytest.skip("the HTTP service is tested on JAX")
    from clusterloss.app.cli.main import main
    from clusterloss.app.serve import open_service

    root = tmp_path_factory.mktemp("serve")
    make_image_folder(root / "photos", classes=6, per_class=20)
    make_image_folder(root / "gallery", classes=5, per_class=8, seed=1)
    make_image_folder(root / "queries", classes=6, per_class=12, seed=2)
    run = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("builtins.print", lambda *a, **k: None)
        assert main(["train", "--data", str(root / "photos"), "--loss", "softmax", "--image-size", "16",
                     "--embedding-dim", "8", "--epochs", "4", "--batch-size", "16", "--verbose", "0",
                     "--no-evaluate", "--out", str(run)]) == 0  # fmt: skip
        assert (
            main(["index", "build", str(run), "--data", str(root / "gallery"), "--far", "0.05", "--verbose", "0"]) == 0
        )
    app, summary = open_service(run, token=TOKEN, max_batch=8, max_queue=64, max_bytes=MAX_BYTES)
    assert summary.startswith("40 items of 5 classes (flat, cosine, threshold ")
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uvicorn_server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    assert uvicorn_server.started
    yield SimpleNamespace(
        port=listener.getsockname()[1],
        url=f"http://127.0.0.1:{listener.getsockname()[1]}",
        run=run,
        queries=root / "queries",
        root=root,
    )
    uvicorn_server.should_exit = True
    thread.join(30)
    listener.close()


@server_test
def test_search_enrol_and_remove_over_http(server):
    status, health = call(server, "GET", "/health")
    assert status == 200 and health == {"status": "ok", "size": 40, "waiting": 0}
    for name in ("class_0", "class_2", "class_4"):
        status, found = search(server, png(files(server.queries, name)[0]), k=4)
        assert status == 200 and found["prediction"] == name and found["known"] is True
        scores = [n["score"] for n in found["neighbors"]]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True) and found["score"] == scores[0]
        assert found["neighbors"][0]["class"] == name and found["threshold"] is not None
        status, thumb = call(server, "GET", found["neighbors"][0]["image"])
        assert status == 200 and thumb[:8] == b"\x89PNG\r\n\x1a\n"
    # the same query as JSON (base64, k as a number) and as a raw image body
    image = png(files(server.queries, "class_1")[0])
    status, by_json = call(
        server,
        "POST",
        "/search",
        json.dumps({"image": base64.b64encode(image).decode(), "k": 2}),
        {"Content-Type": "application/json"},
    )
    status_raw, raw = call(server, "POST", "/search?k=2", image, {"Content-Type": "image/png"})
    assert status == status_raw == 200 and by_json == raw and len(raw["neighbors"]) == 2

    grey = files(server.queries, "class_5")
    before = [search(server, png(p))[1] for p in grey[6:]]
    assert not any(n["class"] == "class_5" for answer in before for n in answer["neighbors"])
    status, enrolled = enrol(server, "class_5", [png(p) for p in grey[:6]])
    assert status == 201 and enrolled["added"] == 6 and len(enrolled["ids"]) == 6 and enrolled["size"] == 46
    after = [search(server, png(p))[1] for p in grey[6:]]
    assert all(answer["neighbors"][0]["class"] == "class_5" for answer in after)
    assert np.mean([answer["prediction"] == "class_5" for answer in after]) >= 0.8, [a["score"] for a in after]
    kept = [n for answer in after for n in answer["neighbors"] if n["class"] == "class_5"]
    assert all(n["path"].startswith(str(server.run / "index" / "uploads")) for n in kept)
    assert call(server, "GET", kept[0]["image"])[0] == 200  # enrolled uploads have thumbnails

    status, removed = remove(server, "class_5")
    assert status == 200 and removed == {"class": "class_5", "removed": 6, "size": 40}
    again = [search(server, png(p))[1] for p in grey[6:]]
    assert not any(n["class"] == "class_5" for answer in again for n in answer["neighbors"])
    assert call(server, "GET", kept[0]["image"])[0] == 404 and not Path(kept[0]["path"]).exists()
    assert remove(server, "class_5") == (404, {"error": "no class 'class_5' in the gallery"})
    status, stats = call(server, "GET", "/stats")
    assert stats["gallery"]["size"] == 40 and stats["gallery"]["num_classes"] == 5
    assert stats["service"]["token_required"] and stats["service"]["images"] >= 20


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with one tiny data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@server_test
def test_bad_requests_are_one_clear_4xx_and_the_server_goes_on(server):
    good = png(files(server.queries, "class_0")[0])
    cases = [
        (multipart([("image", b"hello, not an image")]), 400, r"^image: not an image"),
        (multipart([("image", good[: len(good) // 2])]), 400, r"^image: not a readable image"),
        (multipart([("image", header_only_png(8_000, 8_000))]), 400, r"64,000,000 pixels; at most 50,000,000"),
        (multipart([("k", "3")]), 400, r"^missing field 'image'"),
        (multipart([("file", good)]), 400, r"^unexpected file field 'file'"),
        (multipart([("image", good), ("colour", "red")]), 400, r"^unknown field 'colour'"),
        (multipart([("image", "text")]), 400, r"^image: expected an image file"),
        (multipart([("image", good), ("image", good)]), 400, r"Too many files"),
        (multipart([("image", good), ("k", "0")]), 400, r"^k must be an integer from 1 to 100; got '0'"),
        (multipart([("image", good), ("k", "101")]), 400, r"got '101'"),
        (multipart([("image", good), ("k", "two")]), 400, r"got 'two'"),
        ((b"{not json", {"Content-Type": "application/json"}), 400, r"^the body is not valid JSON"),
        ((b'["x"]', {"Content-Type": "application/json"}), 400, r"^expected a JSON object; got list"),
        ((b'{"image": "%%%"}', {"Content-Type": "application/json"}), 400, r"^image: not base64"),
        ((b'{"image": 5}', {"Content-Type": "application/json"}), 400, r"^image: expected a base64 string"),
        ((b'{"image": "aGk=", "k": [1]}', {"Content-Type": "application/json"}), 400, r"^k: expected a string or"),
        ((b"k=3", {"Content-Type": "application/x-www-form-urlencoded"}), 415, r"^unsupported content type"),
        ((b"x" * (MAX_BYTES + 1), {"Content-Type": "image/png"}), 413, r"larger than 262,144 bytes"),
    ]
    for (body, headers), status, message in cases:
        got, answer = call(server, "POST", "/search", body, headers)
        assert got == status and list(answer) == ["error"] and re.search(message, answer["error"]), (message, answer)
    # a body streamed without a length is counted as it comes
    # (more chunks after the one past the limit: drained; the one past it is the last: not waited for)
    for chunks in ([b"x" * 65536] * (MAX_BYTES // 65536 + 2), [b"x" * MAX_BYTES, b"x"]):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/search", body=iter(chunks), headers={"Content-Type": "image/png"}, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413 and "larger than" in json.loads(response.read())["error"]
        conn.close()
    for method, path, status, message in [
        ("GET", "/nowhere", 404, "no route GET /nowhere"),
        ("PUT", "/search", 405, "PUT is not allowed on /search"),
        ("GET", "/items/abc/image", 400, "item_id must be a positive integer; got 'abc'"),
        ("GET", "/items/999999/image", 404, "item 999999 has no image"),
    ]:
        got, answer = call(server, method, path)
        assert got == status and answer["error"].startswith(message), path
    status, answer = enrol(server, "unknown", [good])
    assert status == 400 and "cannot be a class name" in answer["error"]
    status, answer = enrol(server, "", [good])
    assert status == 400 and answer["error"].startswith("missing field 'name'")
    status, answer = enrol(server, "someone", [good, b"junk"])
    assert status == 400 and answer["error"].startswith("images[1]: not an image")
    assert call(server, "GET", "/health") == (200, {"status": "ok", "size": 40, "waiting": 0})
    status, found = search(server, good)
    assert status == 200 and found["prediction"] == "class_0"


@server_test
def test_enrolment_and_removal_need_the_token(server, monkeypatch, capsys):
    image = png(files(server.queries, "class_5")[0])
    assert enrol(server, "intruder", [image], token=None)[0] == 401
    status, answer = enrol(server, "intruder", [image], token="guess")
    assert status == 403 and answer == {"error": "wrong token"}
    assert remove(server, "class_0", token=None)[0] == 401
    assert remove(server, "class_0", token="guess")[0] == 403
    assert call(server, "GET", "/health")[1]["size"] == 40

    from clusterloss.app.cli.main import main

    monkeypatch.delenv("CLUSTERLOSS_TOKEN", raising=False)
    with pytest.raises(SystemExit) as stopped:
        main(["serve", str(server.run), "--host", "0.0.0.0"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "--host 0.0.0.0 is not a loopback address: set a token" in error and len(error.splitlines()) == 1
    with pytest.raises(SystemExit):  # the port is taken: refused before the model is loaded
        main(["serve", str(server.run), "--port", str(server.port)])
    assert f"cannot listen on 127.0.0.1:{server.port}" in capsys.readouterr().err


@server_test
def test_concurrent_clients_with_enrolment_under_load(server):
    """12 clients x 25 searches (kept-alive connections) while 10 people are enrolled one
    after another: every query answered, every enrolment kept, queries micro-batched."""
    images = [png(p) for name in ("class_0", "class_1", "class_2", "class_3") for p in files(server.queries, name)]
    newcomer = [png(p) for p in files(server.queries, "class_5")]
    failures, enrolled = [], []

    def client(seed: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        rng = np.random.default_rng(seed)
        for _ in range(25):
            try:
                status, answer = search(server, images[rng.integers(len(images))], k=3, connection=conn)
                if status != 200 or len(answer["neighbors"]) != 3:
                    failures.append((status, answer))
            except (OSError, http.client.HTTPException) as error:
                failures.append(repr(error))
        conn.close()
        return seed

    def enroller() -> None:
        for i in range(10):
            status, answer = enrol(server, f"load_{i}", newcomer[2 * i % 12 : 2 * i % 12 + 2])
            if status == 201:
                enrolled.append(answer["ids"])
            else:
                failures.append((status, answer))

    before = call(server, "GET", "/stats")[1]["service"]["batches"]
    with ThreadPoolExecutor(13) as pool:
        done = [pool.submit(client, seed) for seed in range(12)] + [pool.submit(enroller)]
        for future in done:
            future.result(timeout=300)
    assert failures == [] and len(enrolled) == 10
    stats = call(server, "GET", "/stats")[1]
    assert stats["gallery"]["size"] == 60 and stats["gallery"]["num_classes"] == 15  # no enrolment lost
    assert stats["service"]["batches"] - before < 12 * 25 + 10  # queries shared model calls
    assert stats["service"]["largest_batch"] > 1 and stats["service"]["refused"] == 0
    status, found = search(server, newcomer[0], k=20)
    ids = {n["id"] for n in found["neighbors"]}
    assert set(enrolled[0]) <= ids  # the first newcomer's own images are its nearest
    for i in range(10):
        assert remove(server, f"load_{i}")[1]["removed"] == 2
    assert call(server, "GET", "/health")[1]["size"] == 40


@server_test
def test_page_searches_and_enrols_in_headless_chromium(server, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM} (Debian's chromium package: apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    page_text = call(server, "GET", "/")[1].decode()
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", page_text) and "http://" not in page_text
    outside, errors = [], []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server.url, "blob:")) else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('stats').textContent.includes('40 items of 5 classes')")
            assert page.is_visible("#token-label")  # the server wants a token

            page.set_input_files("#file", str(files(server.queries, "class_3")[0]))
            page.wait_for_function("document.querySelectorAll('#neighbors .card').length === 5")
            page.wait_for_function(
                "[...document.querySelectorAll('#neighbors img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            assert page.text_content("#decision") == "class_3"
            assert page.get_attribute("#decision", "class") == "known"
            assert page.locator("#neighbors .class").all_text_contents() == ["class_3"] * 5

            grey = [str(p) for p in files(server.queries, "class_5")]
            page.fill("#enroll-name", "visitor")
            page.set_input_files("#enroll-files", grey[:4])
            page.fill("#enroll-token", TOKEN)
            page.click("#enroll-submit")
            page.wait_for_function("document.getElementById('enroll-result').textContent.startsWith('enrolled')")
            assert page.text_content("#enroll-result") == "enrolled 4 image(s) of visitor; the gallery holds 44 items"
            page.set_input_files("#file", grey[5])
            page.wait_for_function("document.querySelector('#neighbors .class')?.textContent === 'visitor'")
            page.wait_for_function(
                "[...document.querySelectorAll('#neighbors img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert outside == [] and errors == []
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[1] == 1000 and pixels.std() > 20  # text and thumbnails, not blank
    assert remove(server, "visitor")[1]["removed"] == 4


@server_test
@pytest.mark.slow
def test_workers_share_the_gallery(server, tmp_path):
    """`serve --workers 2`: two processes answer on one port, and an enrolment or removal
    through one is seen by searches answered by either (the gallery is the database)."""
    import shutil
    import signal
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(server.run, run, ignore=shutil.ignore_patterns("uploads"))
    process = subprocess.Popen(
        [sys.executable, "-m", "clusterloss", "serve", str(run), "--port", "0", "--workers", "2", "--token", TOKEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("clusterloss serve: http://127.0.0.1:") and "2 workers" in line, line
        there = SimpleNamespace(port=int(line.split("127.0.0.1:")[1].split("/")[0]))
        pids: set[int] = set()
        deadline = time.monotonic() + 180
        while len(pids) < 2 and time.monotonic() < deadline:  # each worker answers once it has compiled
            try:
                pids.add(call(there, "GET", "/stats")[1]["service"]["pid"])
            except OSError:
                time.sleep(0.2)
        assert len(pids) == 2 and process.pid not in pids
        grey = [png(p) for p in files(server.queries, "class_5")]
        assert enrol(there, "class_5", grey[:6])[0] == 201
        with ThreadPoolExecutor(4) as pool:  # new connections: the kernel spreads them over both workers
            answers = list(pool.map(lambda image: search(there, image, k=1), grey[6:] * 4))
        assert all(status == 200 and found["neighbors"][0]["class"] == "class_5" for status, found in answers)
        assert remove(there, "class_5")[1]["removed"] == 6
        answers = list(ThreadPoolExecutor(4).map(lambda image: search(there, image, k=1), grey[6:] * 4))
        assert all(found["neighbors"][0]["class"] != "class_5" for _, found in answers)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
