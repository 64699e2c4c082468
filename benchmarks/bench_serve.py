"""Benchmark `clusterloss serve`: POST /search over HTTP on 127.0.0.1 against the same query
in one process, and a gallery of a million generated embeddings.

1. Latency and throughput: a small CNN run (trained for one epoch on generated 32x32 blobs)
   with a gallery of 320 images. In process: one query at a time (decode + embed + search)
   and batches of 32 (embed + search). Over HTTP (`clusterloss serve` in a subprocess):
   1, 8 and 32 concurrent clients, each a thread with a kept-alive connection sending a
   bounded number of requests (multipart upload; also the raw image/png body).
2. Scale (`--scale N`, default 1,000,000; 0 skips it): N generated 128-D embeddings (a
   mixture of 1,000 Gaussian clusters, one class per cluster) enrolled with `Gallery.add` in
   bulk (items/s), for an exact (flat) and an HNSW gallery. For each: opening the gallery
   against loading its FAISS index alone (fresh processes: seconds and resident memory),
   `clusterloss serve` start-up (process start to a healthy /health) and its memory, POST
   /search p50, and recall@10 of HNSW against exact search (generated queries in process;
   the served answers to the same images).

    python benchmarks/bench_serve.py                      # everything (~15 min on 2 cores)
    python benchmarks/bench_serve.py --scale 0            # part 1 only
    python benchmarks/bench_serve.py --scale 100000 --requests 200
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench_index import make_data  # noqa: E402
from synthetic import make_image_folder  # noqa: E402

from clusterloss.app.cli.main import main as cli  # noqa: E402
from clusterloss.app.gallery import CURRENT, input_format, model_hash, open_run_gallery  # noqa: E402
from clusterloss.app.results import run_model  # noqa: E402
from clusterloss.data.images import decode_image  # noqa: E402
from clusterloss.gallery import Gallery  # noqa: E402
from clusterloss.models.embedder import Embedder  # noqa: E402

BOUNDARY = "bench-boundary"


def quiet(*args: str) -> None:
    """A clusterloss command in this process, its output silenced."""
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli(list(args)) == 0, args


def make_run(root: Path, dim: int, image_size: int = 32) -> Path:
    """A one-epoch CNN run on generated blobs (8 classes x 40 images)."""
    if not (root / "photos").exists():
        make_image_folder(root / "photos", classes=8, per_class=40, size=image_size)
    run = root / f"run{dim}"
    quiet("train", "--data", str(root / "photos"), "--backbone", "cnn", "--loss", "softmax", "--image-size",
          str(image_size), "--embedding-dim", str(dim), "--epochs", "1", "--batch-size", "32", "--verbose", "0",
          "--no-evaluate", "--out", str(run))  # fmt: skip
    return run


def body(image: bytes, k: int, raw: bool) -> tuple[str, bytes, dict[str, str]]:
    if raw:
        return f"/search?k={k}", image, {"Content-Type": "image/png"}
    data = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()  # fmt: skip
    return "/search", data, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


class Server:
    """`clusterloss serve RUN --port 0` in a subprocess, on 127.0.0.1."""

    def __init__(self, run: Path, *extra: str):
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clusterloss", "serve", str(run), "--port", "0", *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line.startswith("clusterloss serve: http://127.0.0.1:"):
            self.process.kill()
            raise RuntimeError(f"serve did not start: {line!r}")
        self.port = int(line.split("127.0.0.1:")[1].split("/")[0])
        while True:  # the print comes after warm-up; /health answers once uvicorn accepts
            try:
                status, _ = self.get("/health")
                if status == 200:
                    break
            except OSError:
                time.sleep(0.01)
        self.start_seconds = time.perf_counter() - self.started

    def get(self, path: str):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def rss_gib(self) -> tuple[float, float]:
        """Resident memory now and at its peak (VmHWM), GiB."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 2**20, int(fields["VmHWM"].split()[0]) / 2**20

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def load(
    port: int, images: list[bytes], clients: int, requests: int, k: int = 5, raw: bool = False, time_limit: float = 60.0
) -> dict[str, float]:
    """`clients` threads, each with its own kept-alive connection, share `requests` POST
    /search requests (stopping early after `time_limit` s): requests/s, p50, p99, failures."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    per_client = max(1, requests // clients)
    deadline = time.perf_counter() + time_limit

    def client(seed: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for i in range(per_client):
            if time.perf_counter() > deadline:
                break
            path, data, headers = body(images[(seed * per_client + i) % len(images)], k, raw)
            start = time.perf_counter()
            conn.request("POST", path, body=data, headers=headers)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 200:
                failures[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": len(ms),
        "rps": len(ms) / wall,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "failures": failures[0],
    }


WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
local f = io.open(os.getenv("BENCH_IMAGE"), "rb")
wrk.body = f:read("*a")
f:close()
"""


def _ms(text: str) -> float:
    """wrk's '1.23ms' / '456.00us' / '1.20s' in milliseconds."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(text)


def load_wrk(port: int, image: bytes, clients: int, seconds: int, root: Path) -> dict[str, float] | None:
    """`wrk` (Debian's, a C load generator much lighter than Python threads) with `clients`
    connections for `seconds` s, one thread per core: requests/s, p50, p99, non-2xx. None
    without wrk."""
    if shutil.which("wrk") is None:
        return None
    (root / "post.lua").write_text(WRK_SCRIPT)
    (root / "query.png").write_bytes(image)
    out = subprocess.run(["wrk", "-t", str(min(2, clients)), "-c", str(clients), "-d", f"{seconds}s", "--latency",
                          "-s", str(root / "post.lua"), f"http://127.0.0.1:{port}/search?k=5"],
                         capture_output=True, text=True, check=True, env={**os.environ, "BENCH_IMAGE": str(root / "query.png")})  # fmt: skip
    lines = out.stdout.splitlines()
    value = {line.split()[0]: line.split()[1] for line in lines if line.strip().startswith(("50%", "99%"))}
    rps = next(float(line.split()[1]) for line in lines if line.startswith("Requests/sec:"))
    total = next(int(line.split()[0]) for line in lines if "requests in" in line)
    failed = next((int(line.split()[-1]) for line in lines if "Non-2xx" in line), 0)
    return {"requests": total, "rps": rps, "p50": _ms(value["50%"]), "p99": _ms(value["99%"]), "failures": failed}


def in_process(run: Path, images: list[bytes], repeats: int) -> dict[str, float]:
    """One query at a time (decode + embed + search) and batches of 32 (embed + search)."""
    model = run_model(run)
    size, channels = input_format(model)
    embedder = Embedder(model.backbone, 32)
    embedder.warm_up()
    gallery = open_run_gallery(run)
    single = []
    for i in range(repeats):
        start = time.perf_counter()
        pixels = decode_image(images[i % len(images)], size, channels)
        gallery.search(embedder(pixels[None]), 5)
        single.append(time.perf_counter() - start)
    batch = np.stack([decode_image(image, size, channels) for image in images[:32]])
    decode = []
    for image in images[:32]:
        start = time.perf_counter()
        decode_image(image, size, channels)
        decode.append(time.perf_counter() - start)
    batched = []
    for _ in range(max(10, repeats // 32)):
        start = time.perf_counter()
        gallery.refresh()
        gallery.search(embedder(batch), 5)
        batched.append(time.perf_counter() - start)
    gallery.close()
    single_ms = np.array(single) * 1000
    return {
        "p50": float(np.percentile(single_ms, 50)),
        "p99": float(np.percentile(single_ms, 99)),
        "rps": 1000 / float(np.mean(single_ms)),
        "batch_ms": float(np.median(batched)) * 1000,
        "batched_rps": 32 / float(np.median(batched)),
        "decode_ms": float(np.median(decode)) * 1000,
    }


def part_latency(root: Path, args) -> list[str]:
    run = make_run(root, 64)
    make_image_folder(root / "gallery", classes=8, per_class=40, size=32, seed=3)
    quiet("index", "build", str(run), "--data", str(root / "gallery"), "--far", "0.05", "--verbose", "0")
    make_image_folder(root / "queries", classes=8, per_class=8, size=32, seed=5)
    images = [p.read_bytes() for p in sorted((root / "queries").rglob("*.png"))]
    base = in_process(run, images, args.requests)
    rows = [
        "| how | clients | requests | requests/s | p50 (ms) | p99 (ms) | vs in-process batched | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| in process, one query (decode + embed + search) | 1 | {args.requests} | {base['rps']:,.0f} | "
        f"{base['p50']:.2f} | {base['p99']:.2f} | {base['rps'] / base['batched_rps']:.2f}x | 0 |",
        f"| in process, batches of 32 (embed + search) | - | - | {base['batched_rps']:,.0f} | "
        f"{base['batch_ms']:.2f} per batch | - | 1.00x | 0 |",
    ]
    print(f"in process: {base}  (decoding one 32x32 PNG: {base['decode_ms']:.3f} ms)", flush=True)
    server = Server(run)
    print(f"serve started in {server.start_seconds:.1f} s", flush=True)
    try:
        load(server.port, images, 4, 100)  # warm the connections and the worker
        for raw in (False, True):
            for clients in args.clients:
                found = load(server.port, images, clients, max(args.requests, 20 * clients), raw=raw)
                how = "POST /search, image/png body" if raw else "POST /search, multipart upload"
                rows.append(row(how, clients, found, base))
        rows += wrk_rows(server.port, "POST /search, image/png body, wrk", images[0], base, args, root)
        for workers in args.workers:
            rows += served_by_workers(run, images, workers, base, args, root)
        stats = server.get("/stats")[1]["service"]
        rows.append(
            f"\nserver: {stats['jobs']} queries in {stats['batches']} model calls (mean batch "
            f"{stats['mean_batch']:.1f}, largest {stats['largest_batch']}); decoding one 32x32 PNG in "
            f"process: {base['decode_ms']:.3f} ms"
        )
    finally:
        server.stop()
    return rows


def row(how: str, clients: int, found: dict[str, float], base: dict[str, float]) -> str:
    """One table row (printed too): requests/s, latency and the ratio to the in-process rate."""
    line = (
        f"| {how} | {clients} | {found['requests']} | {found['rps']:,.0f} | {found['p50']:.2f} | "
        f"{found['p99']:.2f} | {found['rps'] / base['batched_rps']:.2f}x | {found['failures']} |"
    )
    print(line, flush=True)
    return line


def wrk_rows(port: int, how: str, image: bytes, base: dict[str, float], args, root: Path) -> list[str]:
    """A wrk load at each client count (no rows without wrk)."""
    rows = []
    for clients in args.clients:
        found = load_wrk(port, image, clients, args.wrk_seconds, root)
        if found is None:
            print("wrk is not installed (apt-get install wrk): no wrk rows", flush=True)
            break
        rows.append(row(how, clients, found, base))
    return rows


def served_by_workers(
    run: Path, images: list[bytes], workers: int, base: dict[str, float], args, root: Path
) -> list[str]:
    """The wrk rows against `serve --workers N` (once every worker answers)."""
    server = Server(run, "--workers", str(workers))
    try:
        pids, deadline = set(), time.monotonic() + 300
        while len(pids) < workers and time.monotonic() < deadline:
            pids.add(server.get("/stats")[1]["service"]["pid"])
        load(server.port, images, 4, 100)
        return wrk_rows(
            server.port, f"POST /search, image/png body, wrk, --workers {workers}", images[0], base, args, root
        )
    finally:
        server.stop()


PROBE = r"""
import json, os, resource, sys, time
os.environ.setdefault("KERAS_BACKEND", "jax")
what, path = sys.argv[1], sys.argv[2]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
if what == "faiss":
    import faiss
else:
    from clusterloss.gallery import Gallery
    from clusterloss.index import Index
before = rss()
start = time.perf_counter()
if what == "faiss":
    found = faiss.read_index(path); size = found.ntotal
elif what == "index":
    found = Index.load(path); size = len(found)
else:
    found = Gallery(path); size = len(found)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_gib": rss() - before, "size": size}))
"""


def probe(what: str, path: Path) -> dict[str, float]:
    """Open `path` in a fresh process: seconds and resident memory added (the best of 2)."""
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", PROBE, what, str(path)], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["seconds"])


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def part_scale(root: Path, args) -> list[str]:
    run = make_run(root, 128)
    vectors = make_data(args.scale, 128, 1000, seed=0)
    classes = np.char.add("c", (np.arange(args.scale) % 1000).astype(str))  # one class per cluster, round robin
    queries = make_data(1000, 128, 1000, seed=1)
    make_image_folder(root / "scale-queries", classes=8, per_class=4, size=32, seed=7)
    images = [p.read_bytes() for p in sorted((root / "scale-queries").rglob("*.png"))]
    rows = [
        "| gallery | enrolment (items/s) | FAISS index alone: open (s) / RSS (GiB) | clusterloss index file: "
        "open (s) | Gallery (SQLite + index): open (s) / RSS (GiB) | serve start (s) | serve RSS (GiB) | "
        "POST /search p50 (ms) | in-process search p50: Gallery / Index (ms) | recall@10 vs exact |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    truth = served_truth = None
    for kind in ("flat", "hnsw"):
        folder = root / f"run-{kind}"
        shutil.copytree(run, folder)
        (folder / "index").mkdir()
        name = f"gallery-bench-{kind}.sqlite"
        beam = {"ef_search": args.ef_search} if kind == "hnsw" else {}
        gallery = Gallery(folder / "index" / name, dim=128, kind=kind, model_sha256=model_hash(folder), **beam)
        start = time.perf_counter()
        step = 50_000
        for i in range(0, args.scale, step):
            gallery.add(vectors[i : i + step], list(classes[i : i + step]))
        rate = args.scale / (time.perf_counter() - start)
        gallery.flush()
        (folder / CURRENT).write_text(json.dumps({"database": name, "source": "generated"}) + "\n")
        print(f"{kind}: {args.scale:,} items enrolled at {rate:,.0f} items/s", flush=True)

        single_gallery, single_index = [], []
        for q in queries[:100]:
            start = time.perf_counter()
            gallery.search(q[None], 10)
            single_gallery.append(time.perf_counter() - start)
            start = time.perf_counter()
            gallery.index.search(q[None], 10)
            single_index.append(time.perf_counter() - start)
        found = [[n["id"] for n in a["neighbors"]] for a in gallery.search(queries, 10)]
        if kind == "flat":
            truth = found
        cache = next((folder / "index").glob(f"{name}.{kind}.g*.index"))
        raw = folder / "index" / "raw.faiss"
        import faiss

        with np.load(cache) as saved:  # the same FAISS index as a plain FAISS file
            if "faiss_index" in saved.files:
                plain = faiss.deserialize_index(saved["faiss_index"])
            else:
                plain = faiss.IndexFlatIP(128)
                plain.add(saved["vectors"])
        faiss.write_index(plain, str(raw))
        del plain
        gallery.close()
        del gallery

        alone, index_file, opened = (
            probe("faiss", raw),
            probe("index", cache),
            probe("gallery", folder / "index" / name),
        )
        raw.unlink()
        server = Server(folder, *(["--ef-search", str(args.ef_search)] if beam else []))
        try:
            rss, peak = server.rss_gib()
            served = load(server.port, images, 1, args.scale_requests, k=10)
            answers = []
            for image in images:
                path, data, headers = body(image, 10, raw=True)
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                conn.request("POST", path, body=data, headers=headers)
                answers.append([n["id"] for n in json.loads(conn.getresponse().read())["neighbors"]])
                conn.close()
        finally:
            server.stop()
        if kind == "flat":
            served_truth = answers
        quality = (
            "exact"
            if kind == "flat"
            else (
                f"{recall(found, truth):.4f} (generated queries); {recall(answers, served_truth):.4f} (served images)"
            )
        )
        rows.append(
            f"| {args.scale:,} x 128, {kind} | {rate:,.0f} | {alone['seconds']:.2f} / {alone['rss_gib']:.2f} | "
            f"{index_file['seconds']:.2f} | {opened['seconds']:.2f} / {opened['rss_gib']:.2f} | "
            f"{server.start_seconds:.1f} | {rss:.2f} (peak {peak:.2f}) | {served['p50']:.2f} | "
            f"{np.median(single_gallery) * 1000:.2f} / {np.median(single_index) * 1000:.2f} | {quality} |"
        )
        print(rows[-1], flush=True)
        shutil.rmtree(folder)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[2], help="also serve with these --workers counts (wrk rows only)"
    )
    parser.add_argument("--requests", type=int, default=600, help="requests per client count (at least 20 each)")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW search beam of the scale part")
    parser.add_argument("--wrk-seconds", type=int, default=10, help="seconds of each wrk load (Debian's wrk)")
    parser.add_argument("--scale", type=int, default=1_000_000, help="gallery size of part 2 (0: skip)")
    parser.add_argument("--scale-requests", type=int, default=50, help="POST /search requests at scale")
    args = parser.parse_args(argv)
    import keras

    print(
        f"KERAS_BACKEND={keras.backend.backend()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        rows = part_latency(Path(tmp), args)
        if args.scale:
            rows += ["", *part_scale(Path(tmp), args)]
    print()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
