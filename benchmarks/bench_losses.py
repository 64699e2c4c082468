"""Benchmark the pair/triplet losses (forward + backward w.r.t. the embeddings) against
pytorch-metric-learning 2.9.0 on the same inputs, in one run.

Each Keras backend runs in its own subprocess (the backend is fixed at import): JAX and
TensorFlow time a compiled `value_and_grad` (XLA; compilation excluded and reported apart),
torch times eager forward + `backward()`, like PML. PML runs in this process, eager, float32.
Everything runs on `--threads` CPU threads (default 1: on a shared machine, torch's
multi-threaded elementwise ops slow down 5-20x when the cores are busy).

    python benchmarks/bench_losses.py                          # batch 256, dim 128
    python benchmarks/bench_losses.py --batch 128 --repeats 5 --backends jax torch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CASES = ["triplet+semihard", "triplet+batchhard", "contrastive", "multi_similarity+miner",
         "ntxent", "supcon"]


def make_inputs(batch: int, dim: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim)).astype("float32")
    y = np.repeat(np.arange(classes), batch // classes + 1)[:batch]  # P x K sampling
    return x, rng.permutation(y).astype("int32")


def ours(name: str):
    from clusterloss.losses import (ContrastiveLoss, MultiSimilarityLoss, NTXentLoss,
                                    SupConLoss, TripletMarginLoss)
    from clusterloss.miners import BatchHardMiner, MultiSimilarityMiner, TripletMarginMiner

    return {
        "triplet+semihard": lambda: TripletMarginLoss(miner=TripletMarginMiner(0.2, "semihard")),
        "triplet+batchhard": lambda: TripletMarginLoss(miner=BatchHardMiner()),
        "contrastive": ContrastiveLoss,
        "multi_similarity+miner": lambda: MultiSimilarityLoss(miner=MultiSimilarityMiner()),
        "ntxent": NTXentLoss,
        "supcon": SupConLoss,
    }[name]()


def pml(name: str):
    from pytorch_metric_learning import losses, miners

    return {
        "triplet+semihard": (losses.TripletMarginLoss(), miners.TripletMarginMiner(0.2, "semihard")),
        "triplet+batchhard": (losses.TripletMarginLoss(), miners.BatchHardMiner()),
        "contrastive": (losses.ContrastiveLoss(), None),
        "multi_similarity+miner": (losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()),
        "ntxent": (losses.NTXentLoss(), None),
        "supcon": (losses.SupConLoss(), None),
    }[name]


def _median_time(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run_backend(args) -> dict:
    """In a subprocess with KERAS_BACKEND set: time each of our losses."""
    import keras

    backend = keras.backend.backend()
    x, y = make_inputs(args.batch, args.dim, args.classes)
    out = {}
    for name in args.cases:
        loss = ours(name)
        if backend == "jax":
            import jax

            fn = jax.jit(jax.value_and_grad(lambda t: loss(y, t)))
            start = time.perf_counter()
            jax.block_until_ready(fn(x))
            compile_s = time.perf_counter() - start
            step = lambda: jax.block_until_ready(fn(x))  # noqa: E731
        elif backend == "tensorflow":
            import tensorflow as tf

            @tf.function(jit_compile=True)
            def fn(t):
                with tf.GradientTape() as tape:
                    tape.watch(t)
                    value = loss(y, t)
                return value, tape.gradient(value, t)

            xt = tf.constant(x)
            start = time.perf_counter()
            fn(xt)[1].numpy()
            compile_s = time.perf_counter() - start
            step = lambda: fn(xt)[1].numpy()  # noqa: E731
        else:
            import torch

            def step():
                t = torch.tensor(x, requires_grad=True)
                loss(y, t).backward()
                return t.grad

            start = time.perf_counter()
            step()
            compile_s = time.perf_counter() - start
        out[name] = {"step_s": _median_time(step, args.repeats), "first_s": compile_s}
    return out


def run_pml(args) -> dict:
    import torch

    x, y = make_inputs(args.batch, args.dim, args.classes)
    labels = torch.tensor(y, dtype=torch.long)
    out = {}
    for name in args.cases:
        loss, miner = pml(name)

        def step():
            t = torch.tensor(x, requires_grad=True)
            indices = miner(t, labels) if miner is not None else None
            loss(t, labels, indices).backward()

        step()
        out[name] = {"step_s": _median_time(step, args.repeats)}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_backend(args)))
        return

    results = {}
    for backend in args.backends:
        command = [sys.executable, os.path.abspath(__file__), "--worker",
                   "--batch", str(args.batch), "--dim", str(args.dim),
                   "--classes", str(args.classes), "--repeats", str(args.repeats),
                   "--threads", str(args.threads), "--cases", *args.cases]
        threads = str(args.threads)
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": ROOT,
               "OMP_NUM_THREADS": threads, "TF_NUM_INTRAOP_THREADS": threads,
               "TF_NUM_INTEROP_THREADS": threads,
               "XLA_FLAGS": ("--xla_cpu_multi_thread_eigen=false "
                             f"intra_op_parallelism_threads={threads}")}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    reference = run_pml(args)

    print(f"batch {args.batch}, dim {args.dim}, {args.classes} classes; forward + backward, "
          f"median of {args.repeats}, {args.threads} CPU thread(s); "
          "ratio = PML time / ours (> 1: ours faster)")
    header = "| loss | PML (torch) |" + "".join(
        f" {b} | ratio | {'compile' if b != 'torch' else 'first call'} |" for b in args.backends)
    print(header)
    print("|" + " --- |" * (2 + 3 * len(args.backends)))
    for name in args.cases:
        ref = reference[name]["step_s"]
        row = f"| {name} | {ref * 1e3:.1f} ms |"
        for backend in args.backends:
            r = results[backend][name]
            row += f" {r['step_s'] * 1e3:.1f} ms | {ref / r['step_s']:.1f}x | {r['first_s']:.1f} s |"
        print(row)


if __name__ == "__main__":
    main()
