"""`Batcher`: queries of concurrent requests embedded and searched together.

One worker thread owns the model: it takes the oldest queued job and every other job already
waiting (up to `max_batch` images), embeds them in one model call, searches the gallery once
for all the queries among them, and answers each job's future. While requests are still
being read and decoded (`incoming`, counted by the app), it waits for them a little (at most
`MAX_WAIT` seconds): a single client waits for no one (a batch of one), and under load the
batches grow. The queue is bounded: a job that finds it full is refused at once (`Busy`),
never left to wait without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_WAIT = 0.002  # seconds a batch waits for requests that are being read


class Busy(Exception):
    """The queue is full: the server cannot take another job now."""


@dataclass
class Job:
    """Images to embed; with `k`, a search for their `k` nearest gallery items."""

    pixels: np.ndarray
    k: int | None
    future: Future = field(default_factory=Future)


class Batcher:
    """Embeds and searches queued jobs in micro-batches on one worker thread.

    Args:
        embed: `(n, ...) images -> (n, dim) embeddings`.
        gallery: what is searched (`refresh()` before each batch, then `search(q, k)`).
        max_batch: images per batch (a larger job is one batch of its own).
        max_queue: jobs waiting at most; `submit` raises `Busy` past it.
    """

    def __init__(
        self, embed: Callable[[np.ndarray], np.ndarray], gallery: Any, max_batch: int = 32, max_queue: int = 256
    ):
        self.embed = embed
        self.gallery = gallery
        self.max_batch = int(max_batch)
        self.max_queue = int(max_queue)
        self._queue: queue.Queue[Job | None] = queue.Queue(self.max_queue)
        self.incoming = 0  # requests being read and decoded, not yet submitted (the app counts them)
        self._thread = threading.Thread(target=self._work, name="clusterloss-batcher", daemon=True)
        self.counts = {"jobs": 0, "batches": 0, "images": 0, "largest_batch": 0, "refused": 0, "busy_seconds": 0.0}

    def start(self) -> Batcher:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def submit(self, pixels: np.ndarray, k: int | None = None) -> Future:
        """Queue a job; its future gives a list of answers (with `k`) or the embeddings."""
        job = Job(pixels, k)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.counts["refused"] += 1
            raise Busy(f"the server is busy ({self.max_queue} requests waiting); retry later") from None
        return job.future

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued jobs, then stop the worker."""
        if self.alive:
            self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)

    def _work(self) -> None:
        stop = False
        while not stop:
            job = self._queue.get()
            if job is None:
                return
            jobs, images = [job], len(job.pixels)
            deadline = time.perf_counter() + MAX_WAIT
            while images < self.max_batch:
                left = deadline - time.perf_counter()
                try:
                    job = self._queue.get(timeout=left) if self.incoming > 0 and left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    if self.incoming > 0 and deadline > time.perf_counter():
                        continue
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                images += len(job.pixels)
            # a request whose client went away was cancelled: skip it; the rest can no longer be
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        """Embed every job's images in one call, search once for the searching jobs, and
        answer each job (a failed embedding fails them all, a failed search the searches)."""
        start = time.perf_counter()
        sizes = [len(job.pixels) for job in jobs]
        searching = [job for job in jobs if job.k is not None]
        answers: list[dict[str, Any]] = []
        failure: Exception | None = None
        try:
            rows = np.split(self.embed(np.concatenate([job.pixels for job in jobs])), np.cumsum(sizes)[:-1])
        except Exception as error:
            rows, failure = [], error
        if rows and searching:
            try:
                self.gallery.refresh()
                queries = np.concatenate([row for job, row in zip(jobs, rows) if job.k is not None])
                answers = self.gallery.search(queries, max(job.k for job in searching))
            except Exception as error:
                failure = error
        found = iter(answers)
        for i, job in enumerate(jobs):
            if failure is not None and (job.k is not None or not rows):
                job.future.set_exception(failure)
            elif job.k is None:
                job.future.set_result(rows[i])
            else:
                mine = [next(found) for _ in range(sizes[i])]
                job.future.set_result([{**a, "neighbors": a["neighbors"][: job.k]} for a in mine])
        counts = self.counts
        counts["jobs"] += len(jobs)
        counts["batches"] += 1
        counts["images"] += sum(sizes)
        counts["largest_batch"] = max(counts["largest_batch"], sum(sizes))
        counts["busy_seconds"] += time.perf_counter() - start
