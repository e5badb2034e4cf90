"""The bounded queue in front of the models: admission, decoding threads and the model thread.

At most ``capacity`` requests are admitted at once (receiving, decoding, waiting for or running
on the models); one more is answered 503 with Retry-After at once, before its body is read, so
memory stays bounded whatever the number of clients: about ``capacity`` x (upload + decoded
image). Decoding runs in ``decode_workers`` threads; the models run in ONE thread (a second
concurrent forward pass would only compete for the same cores or GPU), on batches of up to
``batch_size`` samples that were waiting together (1 by default: an answer then never depends
on which other requests happened to arrive at the same time).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cxrdet.inference.predictor import ImageResult, Predictor
from cxrdet.inference.sources import Sample


class QueueFull(Exception):
    """No room for another request; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy ({retry_after} s until a slot is likely free)")
        self.retry_after = retry_after


class PredictionFailed(Exception):
    """The models failed on this image; ``str(e)`` is the reason."""


@dataclass
class _Job:
    sample: Sample
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class ModelQueue:
    """Admission control plus the single model thread (see the module docstring)."""

    def __init__(self, predictor: Predictor, capacity: int = 8, batch_size: int = 1,
                 decode_workers: int = 2) -> None:
        if capacity < 1 or batch_size < 1 or decode_workers < 1:
            raise ValueError(f"capacity, batch_size and decode_workers must be >= 1, got "
                             f"{capacity}, {batch_size}, {decode_workers}")
        self.predictor = predictor
        self.capacity = capacity
        self.batch_size = batch_size
        self.admitted = 0
        self.served = 0
        self._seconds_per_image = 1.0  # running mean of the model time, for Retry-After
        self._jobs: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="cxrdet-model")
        self._decode_threads = ThreadPoolExecutor(decode_workers, thread_name_prefix="cxrdet-decode")

    # ---------------------------------------------------------------- admission
    def admit(self) -> None:
        """Take a slot or raise QueueFull (then nothing was taken)."""
        if self.admitted >= self.capacity:
            raise QueueFull(max(1, math.ceil(self._seconds_per_image * self.capacity / self.batch_size)))
        self.admitted += 1

    def release(self) -> None:
        self.admitted = max(0, self.admitted - 1)

    # ---------------------------------------------------------------- work
    async def decode(self, fn: Callable, *args):
        """Run a blocking decoding function in a decoding thread."""
        return await asyncio.get_running_loop().run_in_executor(self._decode_threads, fn, *args)

    async def predict(self, sample: Sample) -> tuple[ImageResult, float]:
        """The prediction of one sample and the seconds it waited for the model thread."""
        if self._jobs is None:
            self.start()
        job = _Job(sample, asyncio.get_running_loop().create_future())
        await self._jobs.put(job)
        return await job.future

    def start(self) -> None:
        """Start the batching task on the running event loop (idempotent)."""
        if self._worker is None:
            self._jobs = asyncio.Queue()  # its length is bounded by admission, not here
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        self._decode_threads.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._jobs.get()]
            while len(batch) < self.batch_size and not self._jobs.empty():
                batch.append(self._jobs.get_nowait())
            started = time.perf_counter()
            try:
                outcome = await loop.run_in_executor(self._model_thread, self.predictor.predict,
                                                     [j.sample for j in batch])
            except Exception as e:  # Predictor lists failures itself; this is a bug or a shutdown
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(PredictionFailed(f"{type(e).__name__}: {e}"))
                continue
            elapsed = time.perf_counter() - started
            self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * elapsed / len(batch)
            self._deliver(batch, outcome, started)

    def _deliver(self, batch: list[_Job], outcome, started: float) -> None:
        # matched by identity: two uploads of one name in a batch share an image id
        results = {id(r.sample): r for r in outcome.results}
        reasons = dict(outcome.failures)
        for j in batch:
            if j.future.done():  # the client went away
                continue
            mine = results.get(id(j.sample))
            if mine is not None:
                self.served += 1
                j.future.set_result((mine, started - j.queued_at))
            else:
                j.future.set_exception(PredictionFailed(reasons.get(j.sample.image_id, "the models failed")))
