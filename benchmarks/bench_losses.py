"""Benchmark the pair/triplet losses (forward + backward w.r.t. the embeddings) against
pytorch-metric-learning 2.9.0 on the same inputs, for several batch sizes, in one run.

Each Keras backend runs in its own subprocess (the backend is fixed at import): JAX and
TensorFlow time a compiled `value_and_grad` (XLA; compilation excluded and reported apart),
torch times eager forward + `backward()`, like PML. PML (eager, float32) runs in the torch
worker, its steps interleaved with ours (or in this process when torch is not benchmarked).
Batches are P classes x K = 8 samples (what `MPerClassSampler` gives), shuffled, dim 128.
Everything runs on `--threads` CPU threads (default 1: on a shared machine, torch's
multi-threaded elementwise ops slow down 5-20x when the cores are busy).

    python benchmarks/bench_losses.py                           # batches 128, 512, 2048
    python benchmarks/bench_losses.py --batches 512 --backends torch --cases contrastive
    python benchmarks/bench_losses.py --root ../old-checkout --backends jax --cases supcon
    python benchmarks/bench_losses.py --batches 128 512 --cases lifted glifted margin nca \
        tuplet angular instance fastap proxynca proxyanchor     # the catalogue losses
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
CASES = [
    "triplet+semihard",
    "triplet+batchhard",
    "contrastive",
    "multi_similarity+miner",
    "ntxent",
    "supcon",
    "circle",
    "xbm+contrastive",
]
# The catalogue losses, not run by default: --cases lifted glifted margin nca ... (the proxy
# losses time our head + loss against PML's loss, which owns the proxies).
CATALOGUE = ["lifted", "glifted", "margin", "nca", "tuplet", "angular", "instance", "fastap", "proxynca", "proxyanchor"]
HEADS = {"proxynca": "ProxyNCA", "proxyanchor": "ProxyAnchor"}
PER_CLASS = 8
MEMORY = 4096  # cross-batch memory size


def make_inputs(batch: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim)).astype("float32")
    y = np.repeat(np.arange(batch // PER_CLASS + 1), PER_CLASS)[:batch]
    return x, rng.permutation(y).astype("int32")


def ours(name: str, dim: int):
    import clusterloss as cl

    return {
        "triplet+semihard": lambda: cl.TripletMarginLoss(miner=cl.TripletMarginMiner(0.2, "semihard")),
        "triplet+batchhard": lambda: cl.TripletMarginLoss(miner=cl.BatchHardMiner()),
        "contrastive": lambda: cl.ContrastiveLoss(),
        "multi_similarity+miner": lambda: cl.MultiSimilarityLoss(miner=cl.MultiSimilarityMiner()),
        "ntxent": lambda: cl.NTXentLoss(),
        "supcon": lambda: cl.SupConLoss(),
        "circle": lambda: cl.CircleLoss(),
        "xbm+contrastive": lambda: cl.CrossBatchMemory(cl.ContrastiveLoss(), dim, MEMORY),
        "lifted": cl.LiftedStructureLoss,
        "glifted": cl.GeneralizedLiftedStructureLoss,
        "margin": cl.MarginLoss,
        "nca": cl.NCALoss,
        "tuplet": cl.TupletMarginLoss,
        "angular": cl.AngularLoss,
        "instance": cl.InstanceLoss,
        "fastap": cl.FastAPLoss,
        "proxynca": cl.ProxyNCALoss,
        "proxyanchor": cl.ProxyAnchorLoss,
    }[name]()


def num_classes(batch: int) -> int:
    return batch // PER_CLASS + 1  # the labels `make_inputs` draws from


def pml(name: str, dim: int, batch: int):
    from pytorch_metric_learning import losses, miners

    return {
        "triplet+semihard": lambda: (losses.TripletMarginLoss(), miners.TripletMarginMiner(0.2, "semihard")),
        "triplet+batchhard": lambda: (losses.TripletMarginLoss(), miners.BatchHardMiner()),
        "contrastive": lambda: (losses.ContrastiveLoss(), None),
        "multi_similarity+miner": lambda: (losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()),
        "ntxent": lambda: (losses.NTXentLoss(), None),
        "supcon": lambda: (losses.SupConLoss(), None),
        "circle": lambda: (losses.CircleLoss(), None),
        "xbm+contrastive": lambda: (losses.CrossBatchMemory(losses.ContrastiveLoss(), dim, MEMORY), None),
        **{
            name: (lambda cls=cls: (cls(), None))
            for name, cls in [
                ("lifted", losses.LiftedStructureLoss),
                ("glifted", losses.GeneralizedLiftedStructureLoss),
                ("margin", losses.MarginLoss),
                ("nca", losses.NCALoss),
                ("tuplet", losses.TupletMarginLoss),
                ("angular", losses.AngularLoss),
                ("instance", losses.InstanceLoss),
                ("fastap", losses.FastAPLoss),
            ]
        },
        **{
            name: (lambda name=name: (getattr(losses, HEADS[name] + "Loss")(num_classes(batch), dim), None))
            for name in HEADS
        },
    }[name]()


def pml_skip(name: str, batch: int) -> str | None:
    """Why PML is not run at this size (it would not fit in memory)."""
    if name in ("ntxent", "lifted", "tuplet") and batch > 256:
        pairs = batch * (PER_CLASS - 1) * batch * (batch - PER_CLASS)
        return f"PML builds a (positive pairs x negative pairs) matrix: {pairs * 4 / 1e9:.0f} GB"
    return None


def _best_time(step, repeats: int) -> float:
    return _best_times([step], repeats)[0]


def _loss_fn(loss, name, y):
    """`embeddings -> scalar loss`; the memory is filled once so every step sees a full one,
    and a proxy loss runs on its head's output (the head built on the first call). The
    labels are a backend tensor, made once (as `fit` passes them, and as PML's are)."""
    from keras import ops

    y = ops.convert_to_tensor(y)
    if name.startswith("xbm"):
        return lambda t: ops.mean(loss(t, y, training=False))
    if name in HEADS:
        import clusterloss as cl

        head = getattr(cl, HEADS[name] + "Head")(num_classes(len(y)))
        return lambda t: loss(y, head(t))
    return lambda t: loss(y, t)


def run_backend(args) -> dict:
    """In a subprocess with KERAS_BACKEND set: time each of our losses."""
    import keras

    backend = keras.backend.backend()
    out = {}
    for batch in args.batches:
        x, y = make_inputs(batch, args.dim)
        for name in args.cases:
            loss = ours(name, args.dim)
            if name.startswith("xbm"):
                for _ in range(MEMORY // batch + 1):
                    loss(x, y, training=True)
            fn = _loss_fn(loss, name, y)
            if backend == "jax":
                import jax

                compiled = jax.jit(jax.value_and_grad(fn))
                start = time.perf_counter()
                jax.block_until_ready(compiled(x))
                first = time.perf_counter() - start
                step = lambda: jax.block_until_ready(compiled(x))  # noqa: E731
            elif backend == "tensorflow":
                import tensorflow as tf

                @tf.function(jit_compile=True)
                def compiled(t):
                    with tf.GradientTape() as tape:
                        tape.watch(t)
                        value = fn(t)
                    return value, tape.gradient(value, t)

                xt = tf.constant(x)
                start = time.perf_counter()
                compiled(xt)[1].numpy()
                first = time.perf_counter() - start
                step = lambda: compiled(xt)[1].numpy()  # noqa: E731
            else:
                import torch

                def step():
                    t = torch.tensor(x, device=_torch_device(), requires_grad=True)
                    fn(t).backward()
                    _synchronize()
                    return t.grad

                start = time.perf_counter()
                step()
                first = time.perf_counter() - start
            key = f"{batch}/{name}"
            if backend == "torch" and not pml_skip(name, batch):
                # PML in the same process, its steps interleaved with ours: on a shared
                # machine the load then weighs on both sides of the ratio alike.
                reference = pml_step(name, batch, args.dim)
                ours_s, pml_s = _best_times([step, reference], args.repeats)
                out[key] = {"step_s": ours_s, "first_s": first, "pml_s": pml_s}
            else:
                out[key] = {"step_s": _best_time(step, args.repeats), "first_s": first}
    return out


def pml_step(name: str, batch: int, dim: int):
    """One PML forward + backward step on the benchmark inputs (warmed up)."""
    import torch

    x, y = make_inputs(batch, dim)
    device = _torch_device()
    labels = torch.tensor(y, dtype=torch.long, device=device)
    loss, miner = pml(name, dim, batch)
    loss = loss.to(device)
    if name.startswith("xbm"):
        for _ in range(MEMORY // batch + 1):
            loss(torch.tensor(x, device=device), labels)

    def step():
        t = torch.tensor(x, device=device, requires_grad=True)
        indices = miner(t, labels) if miner is not None else None
        loss(t, labels, indices).backward()
        _synchronize()

    step()
    return step


def _torch_device():
    """Where torch steps run: the GPU when there is one (as Keras's torch backend picks)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _synchronize() -> None:
    """Wait for the GPU's queued work, so that a step's time is its own (no-op on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _best_times(steps, repeats: int) -> list[float]:
    """The fastest of `repeats` runs of each step, the steps run in turn: on a shared machine
    other jobs only ever add time, so the minimum is the least noisy estimate."""
    times = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times):
            start = time.perf_counter()
            step()
            record.append(time.perf_counter() - start)
    return [float(np.min(t)) for t in times]


def run_pml(args) -> dict:
    out = {}
    for batch in args.batches:
        for name in args.cases:
            if not pml_skip(name, batch):
                step = pml_step(name, batch, args.dim)
                out[f"{batch}/{name}"] = {"step_s": _best_time(step, args.repeats)}
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[128, 512, 2048])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES + CATALOGUE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", default=ROOT, help="the clusterloss checkout to time (default: this one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_backend(args)))
        return

    results = {}
    threads = str(args.threads)
    for backend in args.backends:
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            "--batches",
            *map(str, args.batches),
            "--dim",
            str(args.dim),
            "--repeats",
            str(args.repeats),
            "--threads",
            threads,
            "--cases",
            *args.cases,
        ]
        env = {
            **os.environ,
            "KERAS_BACKEND": backend,
            "PYTHONPATH": args.root,
            "OMP_NUM_THREADS": threads,
            "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": threads,
            "XLA_FLAGS": (f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}"),
        }
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{backend} worker failed:\n{done.stderr[-3000:]}")
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    if "torch" in results:  # PML was timed in the torch worker, interleaved with ours
        reference = {key: {"step_s": r["pml_s"]} for key, r in results["torch"].items() if "pml_s" in r}
    else:
        reference = run_pml(args)

    print(
        f"dim {args.dim}, {PER_CLASS} samples per class; forward + backward, best of "
        f"{args.repeats}, {args.threads} CPU thread(s); ratio = PML time / ours "
        "(> 1: ours faster)"
    )
    header = "| batch | loss | PML (torch) |" + "".join(
        f" {b} | ratio | {'compile' if b != 'torch' else 'first call'} |" for b in args.backends
    )
    print(header)
    print("|" + " --- |" * (3 + 3 * len(args.backends)))
    for batch in args.batches:
        for name in args.cases:
            key = f"{batch}/{name}"
            ref = reference.get(key, {}).get("step_s")
            row = f"| {batch} | {name} | {_ms(ref) if ref else 'not run (*)'} |"
            for backend in args.backends:
                r = results[backend][key]
                ratio = f"{ref / r['step_s']:.2f}x" if ref else "-"
                row += f" {_ms(r['step_s'])} | {ratio} | {r['first_s']:.1f} s |"
            print(row)
    skipped = {f"{b}/{n}": pml_skip(n, b) for b in args.batches for n in args.cases if pml_skip(n, b)}
    for key, why in skipped.items():
        print(f"(*) {key}: {why}")


if __name__ == "__main__":
    main()
