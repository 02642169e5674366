"""Dynamic micro-batching: concurrent requests for one model share one forward pass.

    batcher = Batcher(module, name="mnist", workers=2); batcher.start()
    emb = await batcher.embed(x)             # x: uint8 (C, H, W) -> float32 (D,)
    await batcher.stop()                     # finishes what is queued, then joins the workers

One way in, whoever the caller: :meth:`Batcher.submit` queues images under a :class:`Ticket`
(the request's deadline, and whether it was abandoned) from any thread, and
:meth:`Batcher.wait` awaits their futures; ``embed``/``embed_many`` are just the two together.
``wait`` is the one place a deadline is turned into DeadlineExceeded and counted, and the one
that marks the ticket abandoned, which workers (and the decode pool) read before any work:
a worker thread never reads an asyncio future, which only its loop may touch.

Each model has its own queue and ``workers`` threads (Settings.inference_workers); a worker takes
whatever is queued (up to max_batch_size) and runs it at once, in the model's precision
(app/precision.py). A lone request never waits for company; a worker only lingers up to
max_wait_ms for more when its previous batch was full, i.e. when requests are piling up. Idle
workers split a short queue between them, so the two images of a lone request run side by side
on two cores, while under load each worker takes full batches. Callers may live on any event
loop (uvicorn's, a test client's): results are handed back with ``loop.call_soon_threadsafe``.

The decode pool hands images over with :meth:`Batcher.submit`, straight from its thread, so a
request does not bounce through the event loop between decoding and the forward pass. Only the
workers run the model (besides :meth:`Batcher.run_now`, the event loop's inline path for a lone
small request to an idle model, app/embedding.py): when the decoding threads ran it too,
decoding waited behind inference and every load got slower (docs/serving.md, designs not taken).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from app.metrics import Metrics
from app.precision import Precision, autocast

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, C, H, W) -> float32 (N, D)
Observer = Callable[[np.ndarray], None]  # float32 (B, D) embeddings just computed


class Overloaded(RuntimeError):
    """The model cannot take this work now; the client should retry later (HTTP 503)."""

    reason = "overloaded"


class QueueFull(Overloaded):
    reason = "queue_full"


class DeadlineExceeded(Overloaded):
    reason = "deadline"


class ShuttingDown(Overloaded):
    reason = "shutting_down"


@dataclass(eq=False)
class Ticket:
    """One request's claim on the service's threads: until when it waits, and whether its
    caller has given up. Shared by all its images; read by the threads before each piece of
    work (decode, forward pass), written only by :meth:`Batcher.wait` (a plain attribute:
    safe to read from any thread)."""

    deadline: float  # time.monotonic()
    abandoned: bool = field(default=False)

    def dead(self, now: float | None = None) -> bool:
        """Abandoned or past its deadline: work for it is wasted."""
        return self.abandoned or (time.monotonic() if now is None else now) > self.deadline


@dataclass(eq=False)
class _Item:
    x: torch.Tensor  # (C, H, W) uint8
    future: asyncio.Future[torch.Tensor]
    loop: asyncio.AbstractEventLoop
    enqueued: float  # time.monotonic()
    ticket: Ticket


class Batcher:
    def __init__(
        self,
        forward: Forward,
        *,
        name: str = "model",
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        queue_max: int = 256,
        metrics: Metrics | None = None,
        precision: Precision = "float32",
        workers: int = 1,
    ) -> None:
        self.forward = forward
        self.name = name
        self.precision = precision
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.queue_max = queue_max
        self.metrics = metrics
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.workers = workers
        self._idle = 0  # workers waiting for work
        self._threads: list[threading.Thread] = []
        # Called by the worker with each batch's embeddings after its callers have them (the
        # drift monitor, app/drift.py): its cost is off the event loop and off their latency.
        self.observer: Observer | None = None

    # --- caller side (event loop) ---

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._run, name=f"batcher-{self.name}-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, finish what is queued, join the workers."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))

    @property
    def queued(self) -> int:
        return len(self._items)

    @property
    def idle_workers(self) -> int:
        return self._idle

    async def embed(self, x: torch.Tensor, deadline: float | None = None) -> torch.Tensor:
        """One image (C, H, W) uint8 -> its embedding (D,); ``deadline`` is a time.monotonic()."""
        return (await self.embed_many([x], deadline))[0]

    async def embed_many(
        self, xs: Sequence[torch.Tensor], deadline: float | None = None
    ) -> list[torch.Tensor]:
        """Several images in order; all are queued at once or none is (QueueFull)."""
        loop = asyncio.get_running_loop()
        ticket = Ticket(time.monotonic() + 3600 if deadline is None else deadline)
        futures = [loop.create_future() for _ in xs]
        self.submit(xs, futures, loop, ticket)
        return await self.wait(futures, ticket)

    def submit(
        self,
        xs: Sequence[torch.Tensor],
        futures: Sequence[asyncio.Future[torch.Tensor]],
        loop: asyncio.AbstractEventLoop,
        ticket: Ticket,
    ) -> None:
        """From any thread (the decode pool, or the loop itself): queue ``xs``, their
        embeddings to arrive in ``futures`` (created on ``loop``), without a round trip through
        the event loop. All are queued or none: raises ShuttingDown or QueueFull."""
        now = time.monotonic()
        items = [_Item(x, f, loop, now, ticket) for x, f in zip(xs, futures, strict=True)]
        with self._cond:
            self._enqueue(items)

    async def wait(self, futures: Sequence[asyncio.Future[Any]], ticket: Ticket) -> list[Any]:
        """The results of ``futures`` (on the running loop), in order, by ``ticket.deadline``.

        The one place a deadline becomes DeadlineExceeded (whether the caller's timer or a
        worker noticed it first) and is counted. Whatever ends the wait early (the deadline, a
        failed future, cancellation) abandons the ticket, so queued work for it is skipped.
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + (ticket.deadline - time.monotonic())):
                return list(await asyncio.gather(*futures))
        except (TimeoutError, DeadlineExceeded):
            raise self.expired() from None
        finally:
            if not all(f.done() for f in futures):
                ticket.abandoned = True
                for f in futures:
                    f.cancel()

    def expired(self) -> DeadlineExceeded:
        """The error for a request past its deadline, counted once (by wait, or the inline
        path of app/embedding.py)."""
        self.count_rejected(DeadlineExceeded.reason)
        return DeadlineExceeded(f"model '{self.name}' did not answer in time; retry later")

    def run_now(self, xs: list[torch.Tensor]) -> list[torch.Tensor | Exception]:
        """One forward pass of ``xs`` (C, H, W) on the calling thread, bypassing the queue: the
        inline path of app/embedding.py. The same engine, precision, output check, one-by-one
        retry, metrics (no queue wait: there was none) and observer as a worker's batch.

        Safe beside the workers: it touches no queue state, and the forward callables run
        concurrently from several threads (TorchScript modules, and ONNX Runtime sessions:
        app/artifact.py OnnxModel); the metrics and the observer take their own locks."""
        observer = self.observer
        results = self._run_batch(xs, [])
        if observer is not None:
            self._observe(observer, results)
        return results

    def _enqueue(self, items: list[_Item]) -> None:
        """Queue all of ``items`` or none; call with ``self._cond`` held."""
        if self._closing:
            self.count_rejected(ShuttingDown.reason)
            raise ShuttingDown(f"model '{self.name}' is shutting down")
        if len(self._items) + len(items) > self.queue_max:
            self.count_rejected(QueueFull.reason)
            raise QueueFull(
                f"model '{self.name}' has {len(self._items)} images queued "
                f"(limit {self.queue_max}); retry later"
            )
        self._items.extend(items)
        self._cond.notify_all()

    def count_rejected(self, reason: str) -> None:
        """Count a refusal in imgsim_rejected{model, reason}."""
        if self.metrics is not None:
            self.metrics.rejected.labels(self.name, reason).inc()

    # --- worker side (one thread) ---

    def _run(self) -> None:
        last_was_full = False
        while True:
            with self._cond:
                self._idle += 1
                while not self._items and not self._closing:
                    self._cond.wait()
                self._idle -= 1
                if not self._items:  # closing and drained
                    return
                # Idle workers split a short queue: the two images of a lone request run side by
                # side, each on its own core. Under load every worker takes a full batch.
                share = -(-len(self._items) // (self._idle + 1))
                batch = self._take(min(self.max_batch_size, share))
                if last_was_full and self.max_wait_s > 0:
                    until = time.monotonic() + self.max_wait_s
                    while len(batch) < self.max_batch_size and not self._closing:
                        remaining = until - time.monotonic()
                        if remaining <= 0:
                            break
                        if not self._items:
                            self._cond.wait(remaining)
                        batch += self._take(self.max_batch_size - len(batch))
            last_was_full = len(batch) >= self.max_batch_size
            try:
                self._process(batch)
            except Exception:  # a bug here must not kill the worker and hang every caller
                logger.exception("batcher %s: unexpected error", self.name)
                for item in batch:
                    _resolve(item, RuntimeError("internal error in the batcher"))

    def _take(self, n: int) -> list[_Item]:
        taken: list[_Item] = []
        while self._items and len(taken) < n:
            taken.append(self._items.popleft())
        return taken

    def _process(self, batch: list[_Item]) -> None:
        # Read before the results are handed back: an observer attached once a caller has them
        # (after the warm-up) must not see that caller's images.
        observer = self.observer
        now = time.monotonic()
        live: list[_Item] = []
        for item in batch:
            if item.ticket.abandoned:  # the caller gave up on it
                continue
            if now > item.ticket.deadline:  # counted by the caller's Batcher.wait
                _resolve(item, DeadlineExceeded(f"model '{self.name}' did not answer in time"))
                continue
            live.append(item)
        if live:
            results = self._run_batch([i.x for i in live], [now - i.enqueued for i in live])
            for item, result in zip(live, results, strict=True):
                _resolve(item, result)
            if observer is not None:
                self._observe(observer, results)

    def _run_batch(
        self, xs: list[torch.Tensor], waited_s: list[float]
    ) -> list[torch.Tensor | Exception]:
        """One forward pass over ``xs``; if it fails, each image alone, so one bad item does not
        fail its batch-mates."""
        if self.metrics is not None:
            wait = self.metrics.queue_wait_seconds.labels(self.name)
            for w in waited_s:
                wait.observe(w)
        started = time.perf_counter()
        results: list[torch.Tensor | Exception]
        try:
            out = self._forward(torch.stack(xs))  # (B, D)
            # Rows copied by numpy: a cached embedding must not keep its whole batch alive, and
            # B torch clones would release and retake the GIL B times (see _rows).
            results = _rows(out)
        except Exception:
            logger.warning(
                "batcher %s: batched forward of %d failed; retrying one by one",
                self.name, len(xs), exc_info=True,
            )  # fmt: skip
            results = []
            for x in xs:
                try:
                    results.append(self._forward(x.unsqueeze(0))[0])
                except Exception as e:
                    logger.error("batcher %s: forward failed", self.name, exc_info=True)
                    results.append(e)
        if self.metrics is not None:
            self.metrics.inference_seconds.labels(self.name).observe(time.perf_counter() - started)
            self.metrics.batch_size.labels(self.name).observe(len(xs))
        return results

    def _observe(self, observer: Observer, results: list[torch.Tensor | Exception]) -> None:
        rows = [r.numpy() for r in results if isinstance(r, torch.Tensor)]
        if not rows:
            return
        try:
            observer(np.stack(rows))
        except Exception:  # monitoring must never fail serving
            logger.exception("batcher %s: observer failed", self.name)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(self.precision):
            out = self.forward(x)
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise RuntimeError(f"model returned {tuple(out.shape)} for a batch of {x.shape[0]}")
        return out.float()


def _rows(out: torch.Tensor) -> list[torch.Tensor]:
    """(B, D) -> B tensors (D,) with their own memory.

    With numpy, not torch: every torch call from Python releases the GIL, and while the event
    loop is busy each release costs this thread a wait to get it back, and the loop a switch.
    """
    return [torch.from_numpy(row.copy()) for row in out.numpy()]


def _resolve(item: _Item, result: torch.Tensor | BaseException) -> None:
    def settle() -> None:
        if item.future.done():  # the caller gave up meanwhile
            return
        if isinstance(result, BaseException):
            item.future.set_exception(result)
        else:
            item.future.set_result(result)

    try:
        item.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the caller's loop is closed: nobody is waiting
        pass
