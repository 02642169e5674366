"""app.batching: batched results equal unbatched ones, in order; failures, bounds and deadlines."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from towers import TinyTower

from app import artifact
from app.batching import Batcher, DeadlineExceeded, QueueFull, ShuttingDown, Ticket, _rows


class Recorder:
    """Wraps a real module: records every batch it runs, optionally holding the first one at a
    gate so a test can pile up requests behind it deterministically."""

    def __init__(self, module: torch.nn.Module, gated: bool = False) -> None:
        self.module = module
        self.batches: list[torch.Tensor] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.gate.wait(10), "test never opened the gate"
        self.batches.append(x.clone())
        return self.module(x)

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


class FirstPixels(torch.nn.Module):
    """(N, 1, 4, 4) -> (N, 4): each output is readable back to its own input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :4].float()


class PoisonOnBatch(torch.nn.Module):
    """Fails any batch that holds an image whose first pixel is 255."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.flatten(1)[:, 0] == 255).any()):
            raise RuntimeError("poisoned input")
        return x.flatten(1)[:, :4].float()


def images(n: int, shape: tuple[int, ...] = (1, 4, 4), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 255, shape, generator=g, dtype=torch.uint8) for _ in range(n)]


async def started(batcher: Batcher) -> Batcher:
    batcher.start()
    return batcher


async def wait_until(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10)


def assert_unbatched(got: list[torch.Tensor], tower: torch.nn.Module, xs: list[torch.Tensor]):
    """Each answer equals the whole set run through ``tower`` at once, in order."""
    with torch.inference_mode():
        expected = tower(torch.stack(xs))
    torch.testing.assert_close(torch.stack(got), expected, rtol=1e-5, atol=1e-6)


def test_batched_results_equal_unbatched_forward():
    torch.manual_seed(0)
    tower = artifact.script(TinyTower(1).eval())
    xs = images(40, (1, 28, 28))
    recorder = Recorder(tower, gated=True)

    async def run() -> list[torch.Tensor]:
        batcher = await started(Batcher(recorder, max_batch_size=16))
        first = asyncio.ensure_future(batcher.embed(xs[0]))
        await wait_until(recorder.entered)  # the worker holds xs[0]; the rest queue up
        rest = asyncio.gather(*(batcher.embed(x) for x in xs[1:]))
        await asyncio.sleep(0.05)
        recorder.gate.set()
        out = [await first, *await rest]
        await batcher.stop()
        return out

    assert_unbatched(asyncio.run(run()), tower, xs)
    assert recorder.sizes == [1, 16, 16, 7]  # really batched, never over max_batch_size


def test_order_is_preserved_under_concurrency():
    xs = images(100)

    async def run() -> list[torch.Tensor]:
        batcher = await started(Batcher(FirstPixels(), max_batch_size=8))

        async def one(x: torch.Tensor) -> torch.Tensor:
            await asyncio.sleep(0.001 * int(x[0, 0, 0]) % 3)  # arrive out of step
            return await batcher.embed(x)

        out = await asyncio.gather(*(one(x) for x in xs))
        await batcher.stop()
        return out

    for x, emb in zip(xs, asyncio.run(run()), strict=True):
        assert emb.tolist() == x.flatten()[:4].float().tolist()


def test_a_failing_item_does_not_fail_its_batch_mates():
    xs = images(6)
    xs[3][0, 0, 0] = 255  # poison
    for x in xs[:3] + xs[4:]:
        x[0, 0, 0] = 0
    recorder = Recorder(PoisonOnBatch(), gated=True)

    async def run() -> list[torch.Tensor | BaseException]:
        batcher = await started(Batcher(recorder, max_batch_size=8))
        first = asyncio.ensure_future(batcher.embed(xs[0]))
        await wait_until(recorder.entered)
        rest = asyncio.gather(*(batcher.embed(x) for x in xs[1:]), return_exceptions=True)
        await asyncio.sleep(0.05)
        recorder.gate.set()
        out = [await first, *await rest]
        await batcher.stop()
        return out

    results = asyncio.run(run())
    assert isinstance(results[3], RuntimeError) and "poisoned" in str(results[3])
    for i in [0, 1, 2, 4, 5]:
        assert results[i].tolist() == xs[i].flatten()[:4].float().tolist()
    assert 5 in recorder.sizes  # the batch of five was tried whole, then item by item


def test_queue_bound_raises_queue_full_at_once():
    recorder = Recorder(FirstPixels(), gated=True)
    xs = images(4)

    async def run() -> None:
        batcher = await started(Batcher(recorder, queue_max=2))
        running = asyncio.ensure_future(batcher.embed(xs[0]))
        await wait_until(recorder.entered)  # taken off the queue by the worker
        queued = [asyncio.ensure_future(batcher.embed(x)) for x in xs[1:3]]
        await asyncio.sleep(0)
        assert batcher.queued == 2
        with pytest.raises(QueueFull, match="limit 2"):
            await batcher.embed(xs[3])  # at once: the gated worker has not let anything through
        assert not recorder.gate.is_set()
        with pytest.raises(QueueFull):  # several images: all or none
            await batcher.embed_many(xs[:1])
        recorder.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.stop()

    asyncio.run(run())


def test_deadline_drops_the_work():
    recorder = Recorder(FirstPixels(), gated=True)
    xs = images(2)
    xs[1][0, 0, :4] = torch.tensor([1, 2, 3, 4], dtype=torch.uint8)

    async def run() -> None:
        batcher = await started(Batcher(recorder))
        first = asyncio.ensure_future(batcher.embed(xs[0]))
        await wait_until(recorder.entered)
        with pytest.raises(DeadlineExceeded, match="did not answer in time"):
            await batcher.embed(xs[1], deadline=time.monotonic() + 0.05)
        assert not recorder.gate.is_set()  # answered by the deadline, not by the worker
        recorder.gate.set()
        await first
        await batcher.stop()

    asyncio.run(run())
    assert recorder.sizes == [1]  # the expired image never reached the model
    assert recorder.batches[0][0].flatten()[:4].tolist() != [1, 2, 3, 4]


def test_a_lone_request_does_not_wait_for_the_batch_to_fill():
    async def run() -> float:
        batcher = await started(Batcher(FirstPixels(), max_batch_size=32, max_wait_ms=500))
        await batcher.embed(images(1)[0])  # warm
        started_at = time.perf_counter()
        await batcher.embed(images(1, seed=1)[0])
        elapsed = time.perf_counter() - started_at
        await batcher.stop()
        return elapsed

    assert asyncio.run(run()) < 0.25  # far below max_wait_ms: nobody waited for company


def test_stop_drains_the_queue_then_refuses():
    recorder = Recorder(FirstPixels(), gated=True)
    xs = images(5)

    async def run() -> None:
        batcher = await started(Batcher(recorder))
        pending = [asyncio.ensure_future(batcher.embed(xs[0]))]
        await wait_until(recorder.entered)
        pending += [asyncio.ensure_future(batcher.embed(x)) for x in xs[1:]]
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.05)
        with pytest.raises(ShuttingDown):
            await batcher.embed(xs[0])
        recorder.gate.set()
        await stopping
        assert all(p.done() and p.exception() is None for p in pending)

    asyncio.run(run())
    assert sum(recorder.sizes) == 5


def test_submit_from_a_pool_thread_runs_on_the_worker_and_answers_on_the_loop():
    gate = threading.Event()
    recorder = Recorder(FirstPixels(), gated=True)
    xs = images(9, seed=3)

    async def run() -> None:
        batcher = await started(Batcher(recorder, max_batch_size=8))
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(batcher.embed(xs[0]))  # held at the gate by the worker
        await wait_until(recorder.entered)
        futures = [loop.create_future() for _ in xs[1:]]
        ticket = Ticket(time.monotonic() + 5)
        await asyncio.to_thread(batcher.submit, xs[1:], futures, loop, ticket)
        assert batcher.queued == 8 and not any(f.done() for f in futures)
        gate.set()
        recorder.gate.set()
        embs = await asyncio.gather(first, *futures)
        for x, emb in zip(xs, embs, strict=True):
            assert torch.equal(emb, x.flatten()[:4].float())  # each caller gets its own row
        assert recorder.sizes == [1, 8]  # the eight submitted together ran as one batch
        await batcher.stop()

    asyncio.run(run())


def test_submit_refuses_when_full_or_shutting_down():
    recorder = Recorder(FirstPixels(), gated=True)

    async def run() -> None:
        batcher = await started(Batcher(recorder, queue_max=2))
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(batcher.embed(images(1)[0]))
        await wait_until(recorder.entered)
        with pytest.raises(QueueFull):  # 3 images do not fit a queue of 2: none is queued
            batcher.submit(images(3), [loop.create_future() for _ in range(3)], loop, Ticket(1e12))
        assert batcher.queued == 0
        recorder.gate.set()
        await first
        await batcher.stop()
        with pytest.raises(ShuttingDown):
            batcher.submit(images(1), [loop.create_future()], loop, Ticket(1e12))

    asyncio.run(run())


class ThreadNames(torch.nn.Module):
    """FirstPixels, noting which thread ran each batch and its size. With ``meet``, each batch
    waits (up to 10 s) until that many batches run at once: a worker that took one image cannot
    come back for the other before a second worker has taken it, however loaded the machine."""

    def __init__(self, meet: int = 1) -> None:
        super().__init__()
        self.runs: list[tuple[str, int]] = []
        self.barrier = threading.Barrier(meet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.runs.append((threading.current_thread().name, len(x)))
        self.barrier.wait(10)
        return x.flatten(1)[:, :4].float()


async def all_idle(batcher: Batcher) -> None:
    for _ in range(1000):
        if batcher.idle_workers == batcher.workers:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("workers never went idle")


def test_idle_workers_split_a_lone_request_between_them():
    module = ThreadNames(meet=2)
    xs = images(2)

    async def run() -> list[torch.Tensor]:
        batcher = await started(Batcher(module, workers=2))
        await all_idle(batcher)
        out = await batcher.embed_many(xs)
        await batcher.stop()
        return out

    for x, emb in zip(xs, asyncio.run(run()), strict=True):
        assert emb.tolist() == x.flatten()[:4].float().tolist()
    assert sorted(size for _, size in module.runs) == [1, 1]  # one image each ...
    assert len({name for name, _ in module.runs}) == 2  # ... on two threads


def test_several_workers_still_batch_and_keep_each_answer_with_its_image():
    torch.manual_seed(0)
    tower = artifact.script(TinyTower(1).eval())
    recorder = Recorder(tower)
    xs = images(64, (1, 28, 28), seed=5)

    async def run() -> list[torch.Tensor]:
        batcher = await started(Batcher(recorder, max_batch_size=8, workers=2))
        out = await asyncio.gather(*(batcher.embed(x) for x in xs))
        await batcher.stop()
        return out

    assert_unbatched(asyncio.run(run()), tower, xs)
    assert max(recorder.sizes) <= 8 and sum(recorder.sizes) == 64
    assert max(recorder.sizes) > 1  # 64 requests at once: some shared a forward pass


def test_bfloat16_precision_answers_float32_close_to_the_float32_forward():
    torch.manual_seed(0)
    tower = artifact.script(TinyTower(3).eval())
    xs = images(16, (3, 32, 32), seed=7)

    async def run(precision: str) -> torch.Tensor:
        batcher = await started(Batcher(tower, precision=precision))  # type: ignore[arg-type]
        out = await batcher.embed_many(xs)
        await batcher.stop()
        return torch.stack(out)

    exact, bf16 = asyncio.run(run("float32")), asyncio.run(run("bfloat16"))
    assert bf16.dtype == torch.float32  # the contract's output type, whatever ran inside
    torch.testing.assert_close(bf16, exact, rtol=0, atol=3e-2)
    assert not torch.equal(bf16, exact)  # it really ran in bfloat16


def test_rows_own_their_memory_so_a_cached_row_frees_its_batch():
    out = torch.randn(32, 10)  # (B, D)
    rows = _rows(out)
    assert all(torch.equal(row, ref) for row, ref in zip(rows, out, strict=True))
    assert all(row.untyped_storage().nbytes() == 10 * 4 for row in rows)
    out.zero_()
    assert rows[0].abs().sum() > 0  # copies, not views
