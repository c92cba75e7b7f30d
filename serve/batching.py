"""One inference worker with dynamic batching, and the CPU count torch should use.

Requests decode in a thread pool, then ``await worker.infer(...)``: their tensor joins a bounded queue.
The worker's runner threads take turns at it: one at a time forms the next batch (whatever is waiting,
up to ``max_batch`` items, waiting at most ``wait_s`` for more, and with ``wait_only_for_incoming``
only while other requests are still decoding), then runs each model once on the concatenation while
the next runner forms the following batch; each request's asyncio future is resolved through
``loop.call_soon_threadsafe``. A job whose deadline passes leaves the queue, or the batch it was taken
into, without being computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from serve.monitoring import BATCH_SIZE, EXPIRED_JOBS, INFERENCE_SECONDS, QUEUE_DEPTH

logger = logging.getLogger(__name__)

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
HISTORY = 1024  # (kind, items) of the last batches run, for tests and debugging


def cpu_threads(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: the cgroup v2 quota ("200000 100000" is 2 CPUs, "max" is none),
    rounded down (at least 1), and never more than the CPUs it may run on."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            return max(1, min(available, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or not shaped as expected
        pass
    return available


# The rest of a request besides the model and its decode: HTTP, multipart parsing and thread
# hand-offs, about 2 ms measured at concurrency 1 on an AMX Xeon ("Serving" in the README).
REQUEST_OVERHEAD_S = 0.002
# The model gets every CPU when one image costs it at least this many times the rest of a request:
# below it, a runner per CPU gave more requests/s at concurrency 16 in every alternating pair measured
# (an Intel Xeon Ice Lake at 0.8-3.9x, README "Serving"); at 5x (an AVX2 emulation) it gave 7-13% more
# but a lone request 45-60% slower, and at 6x (the AVX2-only EPYC) the one runner is kept.
ALL_CPUS_COST_RATIO = 4.0


@dataclass(frozen=True)
class InferenceLayout:
    """How the worker runs the models: ``runners`` threads that each take and run whole batches, each
    on ``threads`` torch threads; and why."""

    runners: int
    threads: int
    reason: str


def inference_layout(cpus: int, model_s: float | None = None,
                     decode_s: float | None = None) -> InferenceLayout:
    """The worker's runners and torch threads, given ``cpus``, and why.

    ``model_s``: the classifier's time per image at the largest batch on one thread; ``decode_s``:
    a photo-sized upload's decode on one thread (both measured at startup; None: unknown).

    Where the model dominates a request (``ALL_CPUS_COST_RATIO`` times the rest, or more) it gets
    every CPU, in one runner: on an AVX2-only EPYC (2 cores; int8 ResNet18 at 224 px, 23.8 ms an
    image on one thread, decode 1.8 ms) ``benchmarks/serve_load.py`` at concurrency 16 gave 64.2
    requests/s on 2 threads and 40.0 on 1, and a lone request runs at the speed of both CPUs.

    Otherwise one runner per CPU, each on one torch thread: while one computes a batch the next
    forms, and the decoding threads and the event loop share the CPUs with them through the OS
    scheduler. No runner has an OpenMP team that would wait at each op's barrier for a member the
    decoders took the CPU from: on an AMX Xeon (2 cores; the same model at 3.4 ms an image, decode
    2.4 ms) one runner on 2 threads gave 143-159 requests/s and one on 1 thread 207-212; on a Zen 5
    EPYC (4.4 ms, decode 1.0 ms) one runner on 1 thread gave 205-215 and two runners on 1 thread
    each 251-272; on an Intel Xeon Ice Lake (9.05 ms, decode 2.07 ms: the model 2.2x the rest) two
    runners on 1 thread each gave 99-145 against 85-110 for one runner on 2 (README, "Serving").
    """
    if cpus <= 1:
        return InferenceLayout(1, 1, "1 CPU")
    if model_s is None or decode_s is None:
        return InferenceLayout(cpus, 1, "a runner per CPU (model cost not measured)")
    rest = decode_s + REQUEST_OVERHEAD_S
    costs = (f"the model takes {1000 * model_s:.2f} ms an image on one thread, the rest of a request "
             f"about {1000 * rest:.2f} ms (decode {1000 * decode_s:.2f} + {1000 * REQUEST_OVERHEAD_S:.0f})")
    if model_s >= ALL_CPUS_COST_RATIO * rest:
        return InferenceLayout(1, cpus, f"one runner on all CPUs: {costs}, so the model costs "
                                        f"{model_s / rest:.1f}x the rest")
    return InferenceLayout(cpus, 1, f"a runner per CPU, each on one thread: {costs}, so the model "
                                    f"costs {model_s / rest:.1f}x the rest, under {ALL_CPUS_COST_RATIO:g}x")


def choose_inference_layout(cpus: int, runners: int | None, threads: int | None,
                            measure_costs: Callable[[], tuple[float, float]]) -> InferenceLayout:
    """``runners`` and ``threads`` (FLOWERLAB_INFERENCE_RUNNERS and _THREADS) where set, else
    :func:`inference_layout` from ``measure_costs()`` (model and decode seconds, as
    ``ClassifierPredictor.measure_costs``), which is called only where there is a choice (more than
    one CPU). Where only one is set, the other fills the quota: 1 runner for a set thread count,
    ``cpus // runners`` threads (at least 1) for a set runner count."""
    if runners or threads:
        runners = runners or 1
        threads = threads or max(1, cpus // runners)
        return InferenceLayout(runners, threads, "set by FLOWERLAB_INFERENCE_RUNNERS/_THREADS")
    return inference_layout(cpus, *measure_costs()) if cpus > 1 else inference_layout(cpus)


def use_torch_threads(count: int) -> None:
    """Run torch on ``count`` threads in the calling thread, and keep it so.

    torch's thread count is per thread (OpenMP), and a thread's first parallel op resets it to the
    count last set by *any* thread; so that reset is made to happen first, here."""
    torch.get_num_threads()  # this thread's lazy initialisation
    torch.set_num_threads(count)


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs: answer 503 with Retry-After."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its result came: answer 504."""


class WorkerStopped(Exception):
    """The service is shutting down."""


Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass(eq=False)
class Job:
    kind: str  # jobs of one kind run the same model, so they batch together
    model: Model
    items: torch.Tensor  # (n, ...): n items of the batch
    deadline: float  # time.monotonic()
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[torch.Tensor]

    @property
    def size(self) -> int:
        return len(self.items)


class InferenceWorker:
    """The threads that run the models (``runners`` of them, see :func:`inference_layout`); ``infer``
    is its asyncio side."""

    def __init__(self, max_batch: int, wait_s: float, max_queue: int, threads: int | None = None,
                 wait_only_for_incoming: bool = False, runners: int = 1) -> None:
        self.max_batch, self.wait_s, self.max_queue = max_batch, wait_s, max_queue
        self.threads = threads  # torch threads of each runner; None keeps torch's count
        # True: a forming batch waits for more only while requests are decoding (``incoming``), so a
        # lone request runs at once instead of after the whole window.
        self.wait_only_for_incoming = wait_only_for_incoming
        self._incoming = 0
        self.history: deque[tuple[str, int]] = deque(maxlen=HISTORY)
        self._queue: deque[Job] = deque()
        self._changed = threading.Condition()
        self._forming = threading.Lock()  # held by the one runner forming a batch
        self._stopping = False
        self._threads = [threading.Thread(target=self._run, name=f"inference-{i}", daemon=True)
                         for i in range(runners)]

    @property
    def runners(self) -> int:
        return len(self._threads)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Refuse new jobs, finish every queued one (each as usual: computed, or expired past its
        deadline), and end the runners. Blocks until then: call it off the event loop that waits."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()

    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Around a request's decoding: while it lasts, a forming batch may wait for that request."""
        with self._changed:
            self._incoming += 1
        try:
            yield
        finally:
            with self._changed:
                self._incoming -= 1
                self._changed.notify()

    def queued(self) -> int:
        with self._changed:
            return len(self._queue)

    async def infer(self, kind: str, model: Model, items: torch.Tensor, deadline: float) -> torch.Tensor:
        """``model(items)``, computed in a batch with other waiting jobs of ``kind``.

        Raises QueueFull when ``max_queue`` jobs wait, DeadlineExceeded once ``deadline`` passes.
        """
        loop = asyncio.get_running_loop()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("no answer within the request timeout")
        job = Job(kind, model, items, deadline, loop, loop.create_future())
        with self._changed:
            if self._stopping:
                raise WorkerStopped("the service is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the inference queue is full ({self.max_queue} requests wait); retry later")
            self._queue.append(job)
            self._changed.notify()
        try:
            return await asyncio.wait_for(job.future, remaining)  # cancels the future on timeout
        except TimeoutError:
            self._withdraw(job)
            raise DeadlineExceeded("no answer within the request timeout") from None
        except asyncio.CancelledError:  # the client went away
            self._withdraw(job)
            raise

    def _withdraw(self, job: Job) -> None:
        """Free the queue slot of a job nobody waits for; one the worker took already, it skips."""
        with self._changed:
            if job in self._queue:
                self._queue.remove(job)
                EXPIRED_JOBS.labels(job.kind).inc()

    def _run(self) -> None:
        if self.threads is not None:
            use_torch_threads(self.threads)  # per thread: set here, where the models run
        while (batch := self._take()) is not None:
            kinds: dict[str, list[Job]] = {}
            for job in batch:  # in order of arrival: a kind's jobs run where its first job was queued
                kinds.setdefault(job.kind, []).append(job)
            for kind, jobs in kinds.items():
                self._compute(kind, jobs)

    def _take(self) -> list[Job] | None:
        """The next batch: at least one job, then more up to ``max_batch`` items until ``wait_s``
        has passed since the first; a job that would not fit waits for the next batch. One runner
        at a time forms a batch; the others compute theirs meanwhile or wait for their turn."""
        with self._forming, self._changed:
            while not self._queue and not self._stopping:
                self._changed.wait()
            if not self._queue:  # stopping, and nothing left to finish
                return None
            batch = [self._queue.popleft()]
            items = batch[0].size
            window_end = time.monotonic() + self.wait_s
            while items < self.max_batch:
                if self._queue:
                    if items + self._queue[0].size > self.max_batch:
                        break
                    batch.append(self._queue.popleft())
                    items += batch[-1].size
                    continue
                remaining = window_end - time.monotonic()
                if remaining <= 0 or self._stopping or (self.wait_only_for_incoming and not self._incoming):
                    break
                self._changed.wait(remaining)
            QUEUE_DEPTH.observe(len(batch) + len(self._queue))
            return batch

    def _compute(self, kind: str, jobs: list[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            # done(): timed out or the client went away (read across threads: at worst it is computed)
            if job.deadline <= now or job.future.done():
                EXPIRED_JOBS.labels(kind).inc()
                settle(job, error=DeadlineExceeded("the request timed out before its turn"))
            else:
                live.append(job)
        if not live:
            return
        sizes = [job.size for job in live]
        BATCH_SIZE.labels(kind).observe(sum(sizes))
        start = time.perf_counter()
        try:
            outputs = live[0].model(torch.cat([job.items for job in live]))
        except Exception as error:  # every request of the batch answers 500, the worker keeps going
            logger.exception("%s batch of %d failed", kind, sum(sizes))
            for job in live:
                settle(job, error=error)
            return
        INFERENCE_SECONDS.labels(kind).observe(time.perf_counter() - start)
        self.history.append((kind, sum(sizes)))
        for job, output in zip(live, outputs.split(sizes), strict=True):
            settle(job, result=output)


def settle(job: Job, result: torch.Tensor | None = None, error: Exception | None = None) -> None:
    """Resolve ``job.future`` on its event loop, unless it was cancelled meanwhile."""
    def resolve() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        job.loop.call_soon_threadsafe(resolve)
