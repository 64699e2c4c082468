"""One query through `ClusterModel.embed` against a direct call of the backbone.

A small CNN backbone (32x32 RGB, 64-D) inside a `ClusterModel`; one image at a time:
`model.embed(x[:1])` (what `clusterloss search` and user code call) against
`model.backbone(x[:1], training=False)` (eager) and `model.backbone.predict(x[:1])`.
Median of `--repeats` calls after a warm-up, interleaved; prints milliseconds and the ratio
embed / direct call. Run once per backend:

    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_embed.py
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import clusterloss as cl  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    backbone = cl.make_backbone((32, 32, 3), 64, "cnn")
    model = cl.ClusterModel(backbone, num_classes=10)
    x = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    calls = {
        "embed": lambda i: model.embed(x[i : i + 1]),
        "backbone call": lambda i: keras.ops.convert_to_numpy(model.backbone(x[i : i + 1], training=False)),
        "predict": lambda i: model.backbone.predict(x[i : i + 1], verbose=0),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        for i in range(3):
            call(i)  # warm-up: compilation
    for r in range(args.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call(r % 8)
            times[name].append(time.perf_counter() - start)
    ms = {name: float(np.median(t)) * 1000 for name, t in times.items()}
    np.testing.assert_allclose(calls["embed"](0), calls["backbone call"](0), rtol=1e-4, atol=1e-5)
    print(
        f"backend {keras.backend.backend()}, Keras {keras.__version__}: "
        + ", ".join(f"{name} {value:.2f} ms" for name, value in ms.items())
        + f"; embed / backbone call "
        f"{ms['embed'] / ms['backbone call']:.2f}x"
    )


if __name__ == "__main__":
    main()
