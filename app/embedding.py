"""Uploaded bytes -> embeddings: hash, cache, decode in a thread pool, batch the forward pass.

    embedder = Embedder(settings, cache, metrics)
    embs = await embedder.embed(model, [data_a, data_b])  # [Tensor (D,) | ImageError, ...]

Decoding runs in a DecodePool (round robin across requests, heavy images on at most all but
one thread, bounded, dropping the images of a request that gave up); the decoded image goes
straight from its decode thread to the model's batcher, and both stages check the request's
Ticket before working for it. A request of at most 2 small images to an idle, fast model skips
those hand-offs and runs inline on the event loop (Embedder._inline, bounded; see
docs/serving-engine.md).

Bad images come back as ImageError values in their place, so /similarity/one-to-many can report
a broken candidate without failing the call; the routes decide what to tell the client.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from app import images
from app.batching import QueueFull, ShuttingDown, Ticket
from app.cache import EmbeddingCache
from app.config import Settings
from app.connections import requests_in_progress
from app.images import ImageError, OverBudget
from app.metrics import Metrics
from app.registry import ServedModel

logger = logging.getLogger(__name__)

Outcome = torch.Tensor | ImageError  # what a blob's future resolves to (or a queued embedding)


class Embedder:
    def __init__(self, settings: Settings, cache: EmbeddingCache, metrics: Metrics) -> None:
        self.settings = settings
        self.cache = cache
        self.metrics = metrics
        self.pool = DecodePool(settings.decode_threads, settings.decode_queue_max, metrics)

    def close(self) -> None:
        self.pool.close()

    async def embed(
        self, model: ServedModel, blobs: Sequence[bytes], partition: str = ""
    ) -> list[torch.Tensor | ImageError]:
        """One embedding (D,) or ImageError per blob, in order.

        The whole call (decode + queue + forward) must finish within request_timeout_s, else
        DeadlineExceeded; QueueFull/ShuttingDown come from the decode pool or the batcher, and
        OverBudget when the images together declare more than max_request_pixels.
        ``partition`` keeps one API key's cache entries from another's (see app/security.py).
        """
        batcher = model.batcher
        assert batcher is not None, "model is not being served"
        loop = asyncio.get_running_loop()
        ticket = Ticket(time.monotonic() + self.settings.request_timeout_s)
        unique, where = _distinct(blobs)
        job = _Job(self, model, partition, loop, ticket)
        if self._may_inline(model, unique):
            inline = self._inline(job, unique)
            if inline is not None:
                return [inline[i] for i in where]
        futures: list[asyncio.Future[Outcome]] = [loop.create_future() for _ in unique]
        job.pending.extend([data, future, 0] for data, future in zip(unique, futures, strict=True))
        self.pool.put(job)  # QueueFull at once when too many images wait for a decode thread
        done: list[Outcome] = await batcher.wait(futures, ticket)
        for future, key in job.queued_keys.items():
            self.cache.put(key, future.result())
        return [done[i] for i in where]

    def _may_inline(self, model: ServedModel, unique: list[bytes]) -> bool:
        """Whether a request of these distinct images may be embedded on the event loop: few
        and small, for a model measured fast, while it and the decode pool are idle. Racing a
        worker that is just taking work is harmless: both then compute at once, correctly."""
        settings, batcher = self.settings, model.batcher
        assert batcher is not None
        if not (
            settings.inline_max_bytes
            and len(unique) <= INLINE_MAX_IMAGES
            and model.one_image_ms <= settings.inline_max_forward_ms
        ):
            return False  # not a candidate: not counted as a fallback either
        if any(len(data) > settings.inline_max_bytes for data in unique):
            reason = "bytes"
        elif (
            batcher.queued
            or batcher.idle_workers != batcher.workers
            or self.pool.queued  # its requests would wait behind ours for the loop
            # Other requests already arrived: run inline, they would wait behind this one for
            # the loop, and under steady load every request would then run inline, one at a
            # time and unbatched (measured: half the throughput at concurrency 32).
            or requests_in_progress() > 1
        ):
            reason = "busy"
        else:
            return True
        self.metrics.inline_fallback.labels(model.name, reason).inc()
        return False

    def _inline(self, job: _Job, unique: list[bytes]) -> list[Outcome] | None:
        """The c=1 fast path (docs/serving-engine.md): on the event loop, what the decode pool
        and the batcher would do for ``unique``, with the same checks, cache, errors and
        metrics; None when an image is over the inline pixel cap (the caller then takes the
        pool path, which applies the real limit).

        Bounded: it blocks the loop for at most INLINE_MAX_IMAGES header reads and decodes of
        at most inline_max_bytes and INLINE_MAX_PIXELS each (the header is checked before any
        pixel is decoded), plus one forward pass of that many images by a model measured at
        most inline_max_forward_ms per image, and only while nothing else waits for that model.
        """
        settings, model = self.settings, job.model
        batcher = model.batcher
        assert batcher is not None
        entries: list[list[Any]] = [[data, None, 0] for data in unique]
        cap = min(settings.max_image_pixels, INLINE_MAX_PIXELS)
        try:  # before any cache look-up, so a fallback is not counted twice in the cache metrics
            largest = job.survey(entries)
        except OverBudget:  # refused whole (413), as by the pool's survey
            self.metrics.inline.labels(model.name).inc()
            raise
        if largest > cap:
            self.metrics.inline_fallback.labels(model.name, "pixels").inc()
            return None
        self.metrics.inline.labels(model.name).inc()
        outcomes: list[Outcome | None] = [None] * len(unique)
        todo: list[tuple[int, tuple[str, str, str], torch.Tensor]] = []
        for i, data in enumerate(unique):
            key = job.key(data)
            cached = self.cache.get(key, model.name)
            if cached is not None:
                outcomes[i] = cached
                continue
            started = time.perf_counter()
            try:
                # Under the cap: the survey saw nothing larger, so this decides as under
                # max_image_pixels would (images.survey), and cannot decode more.
                x = images.decode(data, model.card.mode, model.card.size, cap)
            except ImageError as e:
                outcomes[i] = e
                continue
            finally:
                self.metrics.decode_seconds.labels(model.name).observe(
                    time.perf_counter() - started
                )
            todo.append((i, key, x))
        # The deadline, as batcher.wait holds the pool path to it: checked before the forward
        # pass (as a worker does) and after it.
        if job.ticket.dead():
            raise batcher.expired()
        if todo:
            results = batcher.run_now([x for _, _, x in todo])
            for (i, _, _), result in zip(todo, results, strict=True):
                if isinstance(result, Exception):  # as a failed future fails batcher.wait
                    raise result
                outcomes[i] = result
            if job.ticket.dead():
                raise batcher.expired()
            for i, key, _ in todo:  # cached once the request succeeds, as on the pool path
                self.cache.put(key, outcomes[i])  # type: ignore[arg-type]
        return outcomes  # type: ignore[return-value]


def check_request_pixels(total: int, settings: Settings) -> None:
    """OverBudget when one request's images declare more than max_request_pixels together."""
    if total > settings.max_request_pixels:
        raise OverBudget(
            f"the images of this request declare {total} pixels in total, over the limit "
            f"of {settings.max_request_pixels} (max_request_pixels); send fewer or smaller "
            "images"
        )


def request_pixels(blobs: Sequence[bytes], model: ServedModel, settings: Settings) -> int:
    """The pixels decoding ``blobs`` for ``model`` will cost, read from their headers only (for
    a request embedded in several calls: each call checks only its own images)."""
    size = model.card.size
    return sum(images.pixels_to_decode(b, size, settings.max_image_pixels) for b in blobs)


# The inline path (Embedder._inline): at most this many distinct images per request, each of at
# most this many pixels (the image's header and its tiles, before any is decoded).
INLINE_MAX_IMAGES = 2
INLINE_MAX_PIXELS = 512 * 512

# An image of more pixels than this is heavy: it waits while the decode threads that may take
# heavy images are busy (DecodePool). A 12 MP phone JPEG drafts to 0.19 MP; a 2000x2000 PNG is
# about 40 ms of decode on this project's machine, a 40 M pixel one about a second.
LIGHT_PIXELS = 4_000_000


@dataclass(eq=False)
class _Job:
    """One request's images waiting for the decode pool."""

    embedder: Embedder
    model: ServedModel
    partition: str
    loop: asyncio.AbstractEventLoop
    ticket: Ticket
    # [bytes, future, pixels to decode]: pixels filled in by survey(), before any decode.
    pending: deque[list[Any]] = field(default_factory=deque)
    surveyed: bool = False  # survey() ran; set and read under the pool's lock
    surveying: bool = False
    # Futures handed to the batcher, with their cache keys: cached once the request succeeds.
    queued_keys: dict[asyncio.Future[Outcome], tuple[str, str, str]] = field(default_factory=dict)

    def survey(self, entries: list[list[Any]]) -> int:
        """In a decode thread (or inline), before any of the request's images is decoded: read
        every header, note the pixels each will cost, and refuse the whole request (OverBudget)
        if together they are over max_request_pixels, at the cost of reading headers only.
        Returns the most pixels one image or tile declares (images.survey)."""
        settings = self.embedder.settings
        size = self.model.card.size
        largest = 0
        for entry in entries:
            entry[2], declared = images.survey(entry[0], size, settings.max_image_pixels)
            largest = max(largest, declared)
        check_request_pixels(sum(entry[2] for entry in entries), settings)
        return largest

    def key(self, data: bytes) -> tuple[str, str, str]:
        """The cache key of one blob: model version, the API key's partition, sha256."""
        return (self.model.card.version, self.partition, hashlib.sha256(data).hexdigest())

    def run(self, data: bytes, future: asyncio.Future[Outcome]) -> None:
        """In a decode thread: hash, look up, decode and queue one blob to the batcher; its
        future gets the embedding (from the batcher) or an ImageError (from here)."""
        model, embedder = self.model, self.embedder
        key = self.key(data)
        cached = embedder.cache.get(key, model.name)
        if cached is not None:
            _settle(self.loop, future, cached)
            return
        started = time.perf_counter()
        try:
            x = images.decode(
                data, model.card.mode, model.card.size, embedder.settings.max_image_pixels
            )
        except ImageError as e:
            _settle(self.loop, future, e)
            return
        finally:
            embedder.metrics.decode_seconds.labels(model.name).observe(
                time.perf_counter() - started
            )
        assert model.batcher is not None
        self.queued_keys[future] = key  # before the batcher may resolve it
        try:  # the batcher resolves the blob's future itself, on the loop
            model.batcher.submit([x], [future], self.loop, self.ticket)  # type: ignore[list-item]
        except (QueueFull, ShuttingDown) as e:
            _settle(self.loop, future, e, fail=True)


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Outcome],
    value: Outcome | Exception,
    fail: bool = False,
) -> None:
    """From a thread: resolve ``future`` on its loop with a value, or (``fail``) an exception."""

    def settle() -> None:
        if future.done():
            return
        if fail:
            assert isinstance(value, BaseException)
            future.set_exception(value)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody waits
        pass


class DecodePool:
    """Threads that decode uploads, taking one image at a time from each request in turn.

    Round robin, not first come first served: a request of 64 huge images no longer holds
    every thread until it is done (issue 12). Before its first decode, a request's headers are
    surveyed (_Job.survey): over max_request_pixels, it is refused whole. Images over
    LIGHT_PIXELS are heavy, and at most ``threads - 1`` threads decode heavy images at once, so
    small images from other clients always find a thread. A request that has given up (its
    Ticket abandoned or past its deadline) loses its waiting images before they are decoded. At
    most ``queue_max`` images wait across requests; beyond it a request is refused whole
    (QueueFull, 503).
    """

    def __init__(self, threads: int, queue_max: int, metrics: Metrics | None = None) -> None:
        self.queue_max = queue_max
        self.metrics = metrics
        self.heavy_max = max(1, threads - 1)
        self._heavy_running = 0
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # images waiting across jobs
        self._cond = threading.Condition()
        self._closing = False
        self._threads = [
            threading.Thread(target=self._run, name=f"decode-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        return self._queued

    def put(self, job: _Job) -> None:
        if not job.pending:
            return
        with self._cond:
            if self._closing:
                raise ShuttingDown("the service is shutting down")
            if self._queued + len(job.pending) > self.queue_max:
                if self.metrics is not None:
                    self.metrics.rejected.labels(job.model.name, "decode_queue_full").inc()
                raise QueueFull(
                    f"{self._queued} images are waiting to be decoded "
                    f"(limit {self.queue_max}); retry later"
                )
            self._queued += len(job.pending)
            self._jobs.append(job)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                try:
                    while (task := self._take()) is None:
                        if self._closing and not self._jobs:
                            return
                        self._cond.wait()
                except Exception:  # a bug here must not kill the thread: every request waits
                    logger.exception("decode pool: unexpected error while scheduling")
                    continue
            job, entry, heavy = task
            try:
                if entry is None:
                    self._survey(job)
                else:
                    job.run(entry[0], entry[1])
            except Exception as e:  # a bug here must not kill the thread and hang the request
                logger.exception("decode pool: unexpected error")
                if entry is not None:
                    _settle(job.loop, entry[1], e, fail=True)
            finally:
                if heavy:
                    with self._cond:
                        self._heavy_running -= 1
                        self._cond.notify_all()

    def _take(self) -> tuple[_Job, list[Any] | None, bool] | None:
        """The next piece of work (job, its image entry or None to survey it, heavy?), taking
        requests in turn; call with the lock held."""
        for _ in range(len(self._jobs)):
            job = self._jobs.popleft()
            if job.ticket.dead() or not job.pending:  # given up (or refused): none is decoded
                self._queued -= len(job.pending)
                job.pending.clear()
                continue
            if not job.surveyed:
                if not job.surveying:
                    job.surveying = True
                    self._jobs.append(job)
                    return job, None, False
                self._jobs.append(job)  # another thread is reading its headers
                continue
            heavy = job.pending[0][2] > LIGHT_PIXELS
            if heavy and self._heavy_running >= self.heavy_max:
                self._jobs.append(job)
                continue
            entry = job.pending.popleft()
            self._queued -= 1
            if job.pending:
                self._jobs.append(job)  # to the back: the other requests go first
            if heavy:
                self._heavy_running += 1
            return job, entry, heavy
        return None

    def _survey(self, job: _Job) -> None:
        with self._cond:
            entries = list(job.pending)
        try:
            job.survey(entries)
        except OverBudget as e:  # the whole request fails; none of its images is decoded
            with self._cond:
                self._queued -= len(job.pending)
                job.pending.clear()
            _settle(job.loop, entries[0][1], e, fail=True)
        finally:
            with self._cond:
                job.surveyed, job.surveying = True, False
                self._cond.notify_all()

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the images of live requests, then stop the threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _distinct(blobs: Sequence[bytes]) -> tuple[list[bytes], list[int]]:
    """The distinct blobs, and per blob its index among them: an image sent several times in
    one request (a matrix of near-duplicates) is embedded once. Only blobs of equal length are
    compared, so distinct uploads, the usual case, cost the event loop no hashing."""
    same_length = Counter(len(b) for b in blobs)
    first: dict[bytes, int] = {}
    unique: list[bytes] = []
    where: list[int] = []
    for b in blobs:
        i = first.setdefault(b, len(unique)) if same_length[len(b)] > 1 else len(unique)
        if i == len(unique):
            unique.append(b)
        where.append(i)
    return unique, where


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Euclidean distance between two embeddings (D,), the metric every ModelCard uses."""
    # numpy on views of the tensors: this runs on the event loop, where a torch call would
    # release the GIL to the inference workers and wait to get it back.
    d = a.numpy() - b.numpy()
    return math.sqrt(float(np.dot(d, d)))


def distance_matrix(embs: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) euclidean distances with an exact zero diagonal."""
    # The matmul shortcut loses ~1e-4 to cancellation; N <= max_matrix_images, so be exact.
    d = torch.cdist(embs, embs, compute_mode="donot_use_mm_for_euclid_dist")
    return d.fill_diagonal_(0.0)
