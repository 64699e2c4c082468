"""Benchmark classification heads and the center loss at 1k / 100k / 1M classes: time per
training step and peak memory, in one run.

Every case runs in its own subprocess (the backend is fixed at import, and the peak resident
memory `ru_maxrss` is per process): a `ClusterModel` with a small backbone (`Dense(dim)` on
64 inputs), the head, optionally a center loss, Adam, `fit` on random data. The first
`--warmup` steps (compilation) are excluded; the time is the wall time of `--steps` more
steps, divided by their number; with `--repeats R` every case runs R times, interleaved, and the table gives the median.

Heads: `softmax` (SoftmaxHead), `arcface`, `cosface`, `subcenter-arcface` (K = 3: a
`3 * classes` kernel), `lsoftmax` (LargeMarginSoftmax); `arcface-2pass` is ArcFace computed
twice per step (a forward without labels plus one with labels, as ClusterModel did before
0.2), for the one-pass comparison. Center loss: `paper` (Eq. 4 on the batch's rows, the
library), `paper-dense` (Eq. 4 as a dense `(num_classes, dim)` update, as before 0.2),
`gradient` (trainable centers, RowSparse Adam).

    python benchmarks/bench_heads.py --classes 1000 100000 --heads softmax arcface arcface-2pass --repeats 3
    python benchmarks/bench_heads.py --classes 1000000 --heads softmax --sample-rates 1 0.1
    python benchmarks/bench_heads.py --classes 1000000 --heads none --center paper paper-dense

Everything runs on `--threads` CPU threads (default 1, as benchmarks/bench_losses.py: on a
shared machine, a multi-threaded step slows down 2x or more whenever another process takes a
core). Other helpers share the machine: run the 1M cases alone (a 1M x 512 float32 kernel is 2 GB,
Adam keeps two more, the dense gradient one more).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _dense_center_loss():
    """CenterLoss with the pre-0.2 Eq. 4: a dense `(num_classes, dim)` delta every step."""
    from keras import ops

    import clusterloss as cl

    class DenseEq4CenterLoss(cl.CenterLoss):
        def _move_centers(self, x, labels, ok, c):
            n = self.num_classes
            centers = ops.convert_to_tensor(self.centers)
            counts = ops.segment_sum(ops.ones_like(labels, dtype=x.dtype), labels, num_segments=n)
            sums = ops.segment_sum(x, labels, num_segments=n)
            delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
            self.centers.assign(ops.where(ok, centers - self.alpha * delta, centers))

    return DenseEq4CenterLoss


def _two_pass_model():
    """ClusterModel whose training forward also runs the head without labels (pre-0.2)."""
    import clusterloss as cl

    class TwoPass(cl.ClusterModel):
        def call(self, inputs, training=None):
            out = super().call(inputs, training=training)
            if training:
                out["unused_logits"] = self.head(out["embeddings"], training=training)
            return out

    return TwoPass


def run_case(case: dict) -> dict:
    """In a subprocess with KERAS_BACKEND set: train `case` and time it."""
    import keras
    import numpy as np

    import clusterloss as cl

    rng = np.random.default_rng(0)
    n = case["batch"] * (case["warmup"] + case["steps"])
    x = rng.normal(size=(n, 64)).astype("float32")
    y = rng.integers(0, case["classes"], n)
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((64,)), keras.layers.Dense(case["dim"])])
    head_name, rate, classes = case["head"], case["sample_rate"], case["classes"]
    heads = {
        "softmax": lambda: cl.SoftmaxHead(classes, sample_rate=rate),
        "arcface": lambda: cl.ArcFace(classes, sample_rate=rate),
        "arcface-2pass": lambda: cl.ArcFace(classes, sample_rate=rate),
        "cosface": lambda: cl.CosFace(classes, sample_rate=rate),
        "subcenter-arcface": lambda: cl.SubCenterArcFace(classes, sample_rate=rate),
        "lsoftmax": lambda: cl.LargeMarginSoftmax(classes, sample_rate=rate),
        "none": lambda: None,
    }
    centers = {
        "none": None,
        "paper": lambda: cl.CenterLoss(classes, weight=0.01),
        "paper-dense": lambda: _dense_center_loss()(classes, weight=0.01),
        "gradient": lambda: cl.CenterLoss(classes, weight=0.01, update="gradient"),
    }
    model_class = _two_pass_model() if head_name == "arcface-2pass" else cl.ClusterModel
    center = centers[case["center"]]
    model = model_class(  # head "none": the center loss alone (no num_classes: no head)
        backbone,
        head=heads[head_name](),
        center_loss=center() if center else None,
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True) if head_name != "none" else None
    model.compile(keras.optimizers.Adam(1e-3), loss)
    warm = case["batch"] * case["warmup"]
    start = time.perf_counter()
    model.fit(x[:warm], y[:warm], batch_size=case["batch"], epochs=1, shuffle=False, verbose=0)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(x[warm:], y[warm:], batch_size=case["batch"], epochs=1, shuffle=False, verbose=0)
    step_s = (time.perf_counter() - start) / case["steps"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        **case,
        "backend": keras.backend.backend(),
        "step_s": step_s,
        "first_steps_s": compile_s,
        "peak_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--classes", nargs="+", type=int, default=[1000, 100_000])
    parser.add_argument("--heads", nargs="+", default=["softmax", "arcface", "cosface"])
    parser.add_argument("--sample-rates", nargs="+", type=float, default=[1.0])
    parser.add_argument("--center", nargs="+", default=["none"])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case (JSON)
    args = parser.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(json.loads(args.case))))
        return
    print(f"{datetime.date.today()}  python benchmarks/bench_heads.py {' '.join(sys.argv[1:])}\n")
    cases = [
        dict(
            backend=backend,
            head=head,
            classes=classes,
            sample_rate=rate,
            center=center,
            dim=args.dim,
            batch=args.batch,
            steps=args.steps,
            warmup=args.warmup,
        )
        for backend in args.backends
        for classes in args.classes
        for head in args.heads
        for rate in (args.sample_rates if head != "none" else [1.0])
        for center in args.center
    ]
    times: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    peaks: dict[int, float] = {}
    for _ in range(args.repeats):  # interleaved, so that a busy moment hits every case
        for i, case in enumerate(cases):
            result = _run_in_subprocess(case, args.threads)
            if isinstance(result, dict):
                times[i].append(result["step_s"])
                peaks[i] = max(peaks.get(i, 0.0), result["peak_mb"])
            else:
                print(f"failed: {case}: {result}", file=sys.stderr)
    print("| backend | head | classes | sample_rate | center | s/step (median) | runs | peak MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, case in enumerate(cases):
        runs = " ".join(f"{t:.3f}" for t in times[i]) or "failed"
        median = f"{sorted(times[i])[len(times[i]) // 2]:.3f}" if times[i] else "-"
        print(
            f"| {case['backend']} | {case['head']} | {case['classes']:,} | {case['sample_rate']:g} | "
            f"{case['center']} | {median} | {runs} | {peaks.get(i, 0):,.0f} |"
        )


def _run_in_subprocess(case: dict, threads: int) -> dict | str:
    env = {
        **os.environ,
        "KERAS_BACKEND": case["backend"],
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": str(threads),
        "TF_NUM_INTRAOP_THREADS": str(threads),
        "TF_NUM_INTEROP_THREADS": str(threads),
        "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}",
    }
    case = {k: v for k, v in case.items() if k != "backend"}
    proc = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)], env=env, capture_output=True, text=True
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"


if __name__ == "__main__":
    main()
