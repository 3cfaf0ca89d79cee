"""The dynamic batcher of the service: one thread owns the model, and the images of concurrent
requests are embedded together. No torch here.

    batcher = Batcher(setup, max_batch=32, max_wait_ms=2, queue_size=256)
    batcher.start()                          # runs setup() in the model thread: it returns the scorer
    future = batcher.submit(images, pairs)   # (n, 3, H, W) preprocessed images, (left, right) rows in them
    features, similarities = future.result() # or: await asyncio.wrap_future(future)
    batcher.stop()                           # after the jobs queued before it

The model thread takes a job, then more while the batch holds fewer than max_batch images and
max_wait_ms has not passed since the first; every image of them is embedded in batches of up to
max_batch, every pair of them scored by the head in one call. The queue is bounded: when it is
full, submit raises QueueFull at once (the service answers 503 with Retry-After) instead of
memory growing. The runtimes' sessions and engine contexts are only ever used from the model
thread, which is never blocked on a client: requests are decoded before they are queued.
"""

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np


_STOP = object()


class QueueFull(Exception):
    """The batcher's queue is full (or the batcher is stopping): try again shortly."""


@dataclass
class Job:
    images: np.ndarray  # (n, 3, H, W) float32, preprocessed
    pairs: np.ndarray  # (k, 2) rows of images to score by the head
    then: object = None  # then(scorer, features, similarities) -> result, run in the model thread
    future: Future = field(default_factory=Future)


class Batcher:
    """setup() runs first in the model thread and returns the scorer (see scoring.py) the thread
    owns from then on; observe(images) is called with the size of each embedded batch."""

    def __init__(self, setup, *, max_batch=32, max_wait_ms=2.0, queue_size=256, observe=None):
        self.setup, self.max_batch, self.max_wait = setup, max_batch, max_wait_ms / 1000.0
        self.queue = queue.Queue(maxsize=queue_size)
        self.observe = observe or (lambda images: None)
        self.scorer, self.stopping = None, False
        self._ready, self._error = threading.Event(), None
        self.thread = threading.Thread(target=self._main, name="model", daemon=True)

    def start(self):
        """Start the model thread and wait for setup(); its error is raised here."""
        self.thread.start()
        self._ready.wait()
        if self._error is not None:
            self.thread.join()
            raise self._error
        return self.scorer

    @property
    def depth(self):
        """Jobs waiting in the queue."""
        return self.queue.qsize()

    def submit(self, images, pairs=(), then=None):
        """Queue a job; its Future gives (features, similarities), or then()'s result."""
        job = Job(np.asarray(images, np.float32), np.asarray(pairs, np.int64).reshape(-1, 2), then)
        if self.stopping:
            raise QueueFull("the service is stopping")
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"all {self.queue.maxsize} places of the queue are taken") from None
        return job.future

    def stop(self):
        """Refuse new jobs, let the model thread finish the queued ones, and wait for it."""
        self.stopping = True
        if self.thread.is_alive():
            self.queue.put(_STOP)
            self.thread.join()

    def _main(self):
        try:
            self.scorer = self.setup()
        except BaseException as error:  # raised again in start(), in the caller's thread
            self._error = error
            return
        finally:
            self._ready.set()
        while True:
            jobs, stop = self._gather()
            if jobs:
                self._run(jobs)
            if stop:
                return

    def _gather(self):
        """([jobs of the next batch], whether the stop came): the first job waits for as long as it
        takes, the others until the batch is full or max_wait has passed since the first."""
        first = self.queue.get()
        if first is _STOP:
            return [], True
        jobs, images = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait
        while images < self.max_batch:
            try:
                job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
            images += len(job.images)
        return jobs, False

    def _embed(self, images):
        chunks = []
        for start in range(0, len(images), self.max_batch):
            chunk = images[start:start + self.max_batch]
            self.observe(len(chunk))
            chunks.append(np.asarray(self.scorer.embed(chunk), np.float32))
        return np.concatenate(chunks)

    def _run(self, jobs):
        """Embed every image of the jobs, score every pair in one head call, answer each job."""
        sizes = [len(job.images) for job in jobs]
        offsets = np.cumsum([0, *sizes])
        try:
            features = self._embed(np.concatenate([job.images for job in jobs]))
            pairs = np.concatenate([job.pairs + offset for job, offset in zip(jobs, offsets)])
            scored = (np.asarray(self.scorer.score_features(features[pairs[:, 0]], features[pairs[:, 1]]), np.float64)
                      if len(pairs) else np.zeros(0))
        except Exception as error:  # the model failed: every job of the batch is told
            for job in jobs:
                job.future.set_exception(error)
            return
        done = 0
        for job, offset in zip(jobs, offsets):
            own, similarities = features[offset:offset + len(job.images)], scored[done:done + len(job.pairs)]
            done += len(job.pairs)
            try:
                result = job.then(self.scorer, own, similarities) if job.then else (own, similarities)
            except Exception as error:  # this job's own failure (a UserError: its answer); the others go on
                job.future.set_exception(error)
                continue
            job.future.set_result(result)
