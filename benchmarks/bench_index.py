"""Benchmark `clusterloss.index.Index`: build and search times, exact FAISS vs exact NumPy vs
approximate (HNSW, IVF), and recall@k of the approximate indexes against exact search.

Data: synthetic clustered embeddings (a mixture of 1,000 Gaussian clusters in `--dim`
dimensions, like trained embeddings), queries from the same mixture, cosine metric.

    python benchmarks/bench_index.py                       # 10k, 100k, 1M references
    python benchmarks/bench_index.py --sizes 10000 --queries 200
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from clusterloss.index import Index, faiss_available  # noqa: E402


def make_data(n: int, dim: int, clusters: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        which = rng.integers(0, clusters, m)
        out[start : start + m] = centers[which] + 0.6 * rng.normal(size=(m, dim)).astype(np.float32)
    return out


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a[a >= 0], b)) for a, b in zip(found, truth))
    return hits / truth.size


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(method: str, refs: np.ndarray, queries: np.ndarray, k: int, args):
    kwargs = {"metric": "cosine"}
    if method == "faiss-flat":
        kwargs.update(kind="flat", backend="faiss")
    elif method == "numpy-flat":
        kwargs.update(kind="flat", backend="numpy")
    elif method == "hnsw":
        kwargs.update(
            kind="hnsw",
            backend="faiss",
            hnsw_m=args.hnsw_m,
            ef_construction=args.ef_construction,
            ef_search=args.ef_search,
        )
    elif method == "ivf":
        kwargs.update(kind="ivf", backend="faiss", nprobe=args.nprobe)
    start = time.perf_counter()
    index = Index(refs.shape[1], **kwargs)
    index.add(refs)
    build = time.perf_counter() - start
    start = time.perf_counter()
    _, found = index.search(queries, k, batch_size=args.batch_size)
    search = time.perf_counter() - start
    extra = ""
    if method == "ivf":
        extra = f"nlist={index.nlist}, nprobe={index.nprobe}"
    elif method == "hnsw":
        extra = f"M={args.hnsw_m}, efC={args.ef_construction}, efS={args.ef_search}"
    del index
    gc.collect()
    return build, search, found, extra


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=["faiss-flat", "numpy-flat", "hnsw", "ivf"])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--nprobe", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not faiss_available():
        warnings.warn("FAISS is not installed: only numpy-flat runs.", stacklevel=1)
        args.methods = ["numpy-flat"]

    queries = make_data(args.queries, args.dim, args.clusters, seed=args.seed + 1)
    header = f"| references | method | build (s) | search (s) | queries/s | recall@{args.k} vs exact | params |"
    rows = [header, "|---:|---|---:|---:|---:|---:|---|"]
    print(
        f"dim={args.dim}, queries={args.queries}, k={args.k}, cosine, clustered data "
        f"({args.clusters} clusters), {os.cpu_count()} CPU cores",
        flush=True,
    )
    for n in args.sizes:
        refs = make_data(n, args.dim, args.clusters, seed=args.seed)
        truth = None
        for method in args.methods:
            build, search, found, extra = run(method, refs, queries, args.k, args)
            if truth is None and method in ("faiss-flat", "numpy-flat"):
                truth = found
            recall = (
                "exact"
                if method.endswith("flat") and truth is found
                else (f"{recall_at(found, truth):.4f}" if truth is not None else "n/a")
            )
            if method == "numpy-flat" and truth is not found:
                recall = f"{recall_at(found, truth):.4f} (exact)"
            row = (
                f"| {n:,} | {method} | {build:.2f} | {search:.2f} | {args.queries / search:,.0f} | {recall} | {extra} |"
            )
            rows.append(row)
            print(row + f"  [peak RSS {peak_rss_gib():.2f} GiB]", flush=True)
        del refs
        gc.collect()
    print()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
