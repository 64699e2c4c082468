"""Benchmark the image folder loader against tf.data: images/s of one epoch of batches.

Writes `--images` JPEG files of `--file-size` x `--file-size` pixels (default `--size`)
into a temporary class folder (Fashion-MNIST images scaled up and tinted, from
../shared/data, else smooth random images), then reads the folder at `--size` x `--size`,
round after round, with

- `tf.data`: `keras.utils.image_dataset_from_directory(folder, image_size=(size, size),
  batch_size=B, shuffle=True).prefetch(AUTOTUNE)` (float32 batches, values 0-255);
- `clusterloss`: `Batches(ImageFiles(paths, (size, size)), labels, B, shuffle=True)` (float32
  batches, values 0-1): the same output size and dtype, the same files and batch size;
  JPEGs decoded by simplejpeg, or by Pillow alone with `--pillow` (an install without
  simplejpeg).

The two run interleaved in one process (their order alternating from round to round), so
other processes on the machine slow both alike; the table gives each one's median
images/s over `--rounds` and the ratio, and the CPU time each spends per image (the
process's, all its threads: less sensitive to the machine's load than images/s). Each
clusterloss round is a new `Batches` whose read-ahead into the next epoch (unused here)
is finished and counted inside the round. `--scan` also times the start-up check of the
folder (`scan_image_folder(check=True)`: every image read once) per 10,000 images;
`--steps` the CPU time of each step of reading one file, on one thread, over the first
600 files (best of 5 passes).

    python benchmarks/bench_loader.py --images 3000 --size 224 --batch-size 64 --rounds 4
    python benchmarks/bench_loader.py --images 3000 --size 224 --file-size 448 --rounds 4
    python benchmarks/bench_loader.py --images 3000 --size 224 --rounds 4 --pillow
    python benchmarks/bench_loader.py --images 600 --size 224 --rounds 1 --steps
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FASHION = ROOT.parent / "shared/data/keras/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def _sources(n: int):
    """`n` grayscale images (uint8, any size): Fashion-MNIST if present, else smooth noise."""
    import numpy as np

    if FASHION.is_file():
        with gzip.open(FASHION) as handle:
            pixels = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        return pixels[np.arange(n) % len(pixels)]
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (n, 7, 7), dtype=np.uint8)
    return np.kron(coarse, np.ones((4, 4), np.uint8))


def write_folder(root: Path, n: int, size: int, classes: int = 10) -> None:
    """`n` RGB JPEGs (quality 90) of `size` x `size` in `classes` class folders."""
    import numpy as np
    from PIL import Image

    tints = np.random.default_rng(1).uniform(0.4, 1.0, (classes, 3))
    for i, gray in enumerate(_sources(n)):
        label = i % classes
        big = np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR), np.float32)
        rgb = (big[..., None] * tints[label]).astype(np.uint8)
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / f"{i:06d}.jpg", quality=90)


def cpu_ms(read, count: int, passes: int = 5) -> float:
    """CPU ms per call of `read(i)` for i in range(count), best of `passes`."""
    best = float("inf")
    for _ in range(passes):
        began = time.process_time()
        for i in range(count):
            read(i)
        best = min(best, (time.process_time() - began) / count * 1e3)
    return best


def steps(paths: list[str], size: tuple[int, int], decoder) -> None:
    """Print the CPU ms per image of each step of `read_image`, on one thread: the file
    read, simplejpeg's header and decode (`decoder`, the module), the float32 conversion,
    the whole, and the whole with Pillow alone."""
    import numpy as np

    from clusterloss.data import images

    paths = paths[:600]
    out = np.empty((*size, 3), np.float32)
    images.simplejpeg = decoder
    data = [images._read(p) for p in paths]
    decoded = [images._jpeg_pixels(d, size, 3, None) for d in data]
    assert all(d is not None and d.shape[:2] == size for d in decoded), "--steps needs simplejpeg, files of --size"
    rows = {
        "file read": cpu_ms(lambda i: images._read(paths[i]), len(paths)),
        "header + decode (simplejpeg)": cpu_ms(lambda i: images._jpeg_pixels(data[i], size, 3, None), len(paths)),
        "float32 conversion": cpu_ms(lambda i: images._to_float(decoded[i], 255.0, size, 3, out), len(paths)),
        "read_image (all of it)": cpu_ms(lambda i: images.read_image(paths[i], size, 3, out), len(paths)),
    }
    images.simplejpeg = None
    rows["read_image, Pillow alone"] = cpu_ms(lambda i: images.read_image(paths[i], size, 3, out), len(paths))
    images.simplejpeg = decoder
    for name, ms in rows.items():
        print(f"  {name:30s} {ms:.3f} CPU ms per image (one thread)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--file-size", type=int, help="pixels of the files (default: --size)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--scan", action="store_true", help="also time the start-up check")
    parser.add_argument("--pillow", action="store_true", help="decode with Pillow alone (no simplejpeg)")
    parser.add_argument("--steps", action="store_true", help="also time each step of reading a file")
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from clusterloss.data import Batches, ImageFiles, images
    from clusterloss.data.folder import scan_image_folder

    decoder = images.simplejpeg
    if args.pillow:
        images.simplejpeg = None

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "images"
        write_folder(folder, args.images, args.file_size or args.size)
        size = (args.size, args.size)
        reference = keras.utils.image_dataset_from_directory(
            folder, image_size=size, batch_size=args.batch_size, shuffle=True, seed=0, verbose=False
        ).prefetch(tf.data.AUTOTUNE)
        paths, labels, _ = scan_image_folder(folder, check=False)
        files = ImageFiles(paths, size, 3)

        def tf_epoch(epoch: int) -> int:
            return sum(len(np.asarray(x)) for x, _ in reference)

        def our_epoch(epoch: int) -> int:
            ours = Batches(files, labels, args.batch_size, shuffle=True, seed=0, epoch=epoch)
            count = sum(len(ours[i][0]) for i in range(len(ours)))
            ours._reader.shutdown(wait=True)  # its read-ahead: finished, counted
            return count

        loaders = {"tf.data": tf_epoch, "clusterloss": our_epoch}
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        cpu: dict[str, list[float]] = {name: [] for name in loaders}
        for epoch in loaders.values():  # warm-up: file cache, thread pools, TF graph
            epoch(0)
        for round_ in range(args.rounds):
            for name in list(loaders)[:: 1 if round_ % 2 == 0 else -1]:
                began, cpu_began = time.perf_counter(), time.process_time()
                count = loaders[name](round_)
                rates[name].append(count / (time.perf_counter() - began))
                cpu[name].append((time.process_time() - cpu_began) / count * 1e3)
                assert count == args.images, (name, count)
        median = {name: statistics.median(values) for name, values in rates.items()}
        side = args.file_size or args.size
        print(
            f"{args.images} JPEGs of {side}x{side} read at {args.size}x{args.size}, batches of "
            f"{args.batch_size}, {os.cpu_count()} cores, median of {args.rounds} interleaved rounds, "
            f"JPEGs decoded by {'simplejpeg' if images.simplejpeg else 'Pillow'}"
        )
        for name, values in rates.items():
            print(
                f"  {name:12s} {median[name]:8.0f} images/s, {statistics.median(cpu[name]):.3f} CPU ms "
                f"per image  (rounds: {', '.join(f'{v:.0f}' for v in values)} images/s)"
            )
        print(f"  ratio clusterloss / tf.data: {median['clusterloss'] / median['tf.data']:.2f}x")
        if args.scan:
            began, cpu_began = time.perf_counter(), time.process_time()
            scan_image_folder(folder, check=True)
            seconds = (time.perf_counter() - began) * 10_000 / args.images
            cpu_seconds = (time.process_time() - cpu_began) * 10_000 / args.images
            print(
                f"  start-up check (every image read once): {seconds:.1f} s per 10,000 images "
                f"({cpu_seconds:.1f} s of CPU)"
            )
        if args.steps:
            steps(paths, size, decoder)


if __name__ == "__main__":
    main()
