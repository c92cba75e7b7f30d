"""The inference worker: dynamic batching, the bounded queue (503), the request deadline (504),
/generate in chunks that let /predict in between, and torch's thread count from the CPU quota.

Nothing here waits for a race to go one way: a gate blocks the model inside the worker thread while
the test lines up the queue, then opens.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from serve import app as app_module
from serve.app import create_app
from serve.batching import (
    DeadlineExceeded,
    InferenceWorker,
    QueueFull,
    WorkerStopped,
    choose_inference_layout,
    cpu_threads,
    inference_layout,
)
from serve.predictor import ClassifierPredictor, VaePredictor
from tests.builders import CLASSES, encode_image, noise_image

WAIT_S = 60  # only reached when something is broken


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def post(client: TestClient, data: bytes, **params: object):
    return client.post("/predict", params=params, files={"file": ("upload", data)})


def by_class(response) -> list[float]:
    assert response.status_code == 200, response.text
    probability = {p["class_id"]: p["probability"] for p in response.json()["predictions"]}
    return [probability[i] for i in range(len(CLASSES))]


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


class Gate:
    """Wraps a model method: the calls numbered in ``blocked`` (from 0) block inside the worker thread
    until ``open(call)``; ``batches`` records the size of every call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type, method: str,
                 blocked: tuple[int, ...] = (0,)) -> None:
        self.events = {call: (threading.Event(), threading.Event()) for call in blocked}  # entered, opened
        self.batches: list[int] = []
        original, gate = getattr(cls, method), self

        def gated(self, batch: torch.Tensor) -> torch.Tensor:
            call = len(gate.batches)
            gate.batches.append(len(batch))
            if call in gate.events:
                entered, opened = gate.events[call]
                entered.set()
                assert opened.wait(WAIT_S)
            return original(self, batch)

        monkeypatch.setattr(cls, method, gated)

    def wait_entered(self, call: int = 0) -> None:
        assert self.events[call][0].wait(WAIT_S), f"model call {call} never came"

    def open(self, call: int | None = None) -> None:
        for number, (_entered, opened) in self.events.items():
            if call in (None, number):
                opened.set()


@contextmanager
def started(served_root: Path, monkeypatch: pytest.MonkeyPatch, **settings: object) -> Iterator[TestClient]:
    """An app of its own with FLOWERLAB_<NAME> settings; its gates always open at the end."""
    monkeypatch.setenv("FLOWERLAB_ROOT", str(served_root))
    for name, value in settings.items():
        monkeypatch.setenv(f"FLOWERLAB_{name.upper()}", str(value))
    with TestClient(create_app()) as client:
        yield client


def worker_of(client: TestClient) -> InferenceWorker:
    return client.app.state.service.worker


IMAGES = [encode_image(noise_image(seed=seed), "PNG") for seed in range(8)]


# --- torch threads from the CPU quota ---

@pytest.mark.parametrize(("content", "expected"), [
    ("200000 100000\n", 2), ("150000 100000", 1), ("50000 100000", 1), ("400000 50000", 8),
    ("1600000 100000", 8), ("max 100000\n", 8), ("", 8), ("garbage", 8), (None, 8),
], ids=["2_cpus", "1.5_cpus", "half_cpu", "other_period", "over_affinity", "max", "empty", "garbage",
        "missing"])
def test_cpu_threads_follow_the_cgroup_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             content: str | None, expected: int) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    cpu_max = tmp_path / "cpu.max"
    if content is not None:
        cpu_max.write_text(content)
    assert cpu_threads(cpu_max) == expected


def test_the_models_run_with_the_quotas_threads(served_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before, seen = torch.get_num_threads(), []
    original = ClassifierPredictor.predict
    monkeypatch.setattr(app_module, "cpu_threads", lambda: 1)
    try:
        with started(served_root, monkeypatch, max_batch=7, batch_wait_ms=2.5, max_queue=9) as client:
            monkeypatch.setattr(ClassifierPredictor, "predict", lambda self, batch: (
                seen.append(torch.get_num_threads()) or original(self, batch)))
            assert post(client, IMAGES[0]).status_code == 200
            worker = worker_of(client)
            assert (worker.max_batch, worker.wait_s, worker.max_queue) == (7, 0.0025, 9)
            assert client.app.state.service.cpu_pool.total_tokens == 1
    finally:
        torch.set_num_threads(before)
    assert seen == [1]  # in the worker thread


# Per-image model cost and decode cost measured at startup (seconds), as on the CPUs the rule was
# measured on: int8 ResNet18 at 224 px on an AMX Xeon, an Intel Xeon Ice Lake, and an AVX2-only EPYC.
AMX_COSTS, ICE_LAKE_COSTS, AVX2_COSTS = (0.00336, 0.00238), (0.00905, 0.00207), (0.0238, 0.00181)


@pytest.mark.parametrize("cpus, costs, expected", [
    (2, AMX_COSTS, (2, 1)),  # the model the smaller cost: a runner per CPU, one thread each
    (2, ICE_LAKE_COSTS, (2, 1)),  # the model 2.2x the rest: still a runner per CPU
    (2, AVX2_COSTS, (1, 2)),  # the model dominates: one runner on both
    (4, AMX_COSTS, (4, 1)),
    (4, AVX2_COSTS, (1, 4)),
    (1, AVX2_COSTS, (1, 1)),
    (3, (None, None), (3, 1)),  # not measured: a runner per CPU
])
def test_inference_layout_follows_the_measured_costs(cpus: int, costs: tuple, expected: tuple) -> None:
    layout = inference_layout(cpus, *costs)
    assert (layout.runners, layout.threads) == expected
    assert layout.reason


def test_the_model_gets_every_cpu_in_one_runner_from_four_times_the_rest_of_a_request() -> None:
    decode = 0.001  # the rest: decode + 2 ms of HTTP = 3 ms
    dominant, smaller = inference_layout(2, 0.0121, decode), inference_layout(2, 0.0119, decode)
    assert (dominant.runners, dominant.threads) == (1, 2)
    assert (smaller.runners, smaller.threads) == (2, 1)


@pytest.mark.parametrize("cpus, runners, threads, expected", [
    (4, None, 2, (1, 2)),  # a set thread count: one runner, as before runners could be set
    (4, 2, None, (2, 2)),  # a set runner count: the quota shared among them
    (3, 2, None, (2, 1)),
    (1, 3, None, (3, 1)),
    (2, 3, 2, (3, 2)),  # both set: as set
])
def test_a_set_layout_is_taken_as_set_without_measuring(cpus: int, runners: int | None, threads: int | None,
                                                        expected: tuple) -> None:
    def never() -> tuple[float, float]:
        raise AssertionError("measured although the layout was set")

    layout = choose_inference_layout(cpus, runners, threads, never)
    assert (layout.runners, layout.threads) == expected
    assert "FLOWERLAB_INFERENCE" in layout.reason


def test_startup_measures_the_costs_it_chooses_the_threads_from(served_root: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    measured = []
    measure = ClassifierPredictor.measure_costs
    monkeypatch.setattr(ClassifierPredictor, "measure_costs", lambda self, batch: (
        measured.append((batch, measure(self, batch))) or measured[-1][1]))
    monkeypatch.setattr(app_module, "cpu_threads", lambda: 2)
    before = torch.get_num_threads()
    try:
        with started(served_root, monkeypatch, max_batch=5) as client:
            service = client.app.state.service
            assert post(client, IMAGES[0]).status_code == 200
            [(batch, (model_s, decode_s))] = measured
            assert batch == 5 and 0 < model_s < 5 and 0 < decode_s < 5
            assert service.layout == inference_layout(2, model_s, decode_s)
            assert (service.worker.runners, service.worker.threads) == (service.layout.runners,
                                                                        service.layout.threads)
            metrics = client.get("/metrics").text
            assert f"flowerlab_inference_threads {service.worker.threads:.1f}" in metrics
            assert f"flowerlab_inference_runners {service.worker.runners:.1f}" in metrics
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("cpus, settings, costs, runners, model_threads", [
    (3, {}, AMX_COSTS, 3, 1),  # a runner per CPU of the quota, each on one thread
    (2, {}, AMX_COSTS, 2, 1),
    (2, {}, AVX2_COSTS, 1, 2),  # a model that costs far more than decoding: one runner on every CPU
    (1, {}, AVX2_COSTS, 1, 1),
    (2, {"inference_threads": 2}, AMX_COSTS, 1, 2),  # FLOWERLAB_INFERENCE_THREADS
    (2, {"inference_threads": 1}, AVX2_COSTS, 1, 1),
    (2, {"inference_runners": 2}, AVX2_COSTS, 2, 1),  # FLOWERLAB_INFERENCE_RUNNERS
])
def test_only_the_worker_runs_torch_on_several_threads(served_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                      cpus: int, settings: dict, costs: tuple, runners: int,
                                                      model_threads: int) -> None:
    """Decoding threads and the event loop's thread run torch on one thread: an OpenMP team in each
    would oversubscribe the CPUs (see serve.app.single_threaded)."""
    before, seen = torch.get_num_threads(), {"predict": [], "decode": [], "encode": []}
    predict, decode = ClassifierPredictor.predict, ClassifierPredictor.decode_request
    encode = ClassifierPredictor.encode_response
    monkeypatch.setattr(app_module, "cpu_threads", lambda: cpus)
    monkeypatch.setattr(ClassifierPredictor, "measure_costs", lambda self, batch: costs)
    try:
        with started(served_root, monkeypatch, **settings) as client:
            assert client.app.state.service.cpu_pool.total_tokens == cpus
            metrics = client.get("/metrics").text
            assert metrics.count(f"flowerlab_inference_threads {model_threads:.1f}") == 1
            assert metrics.count(f"flowerlab_inference_runners {runners:.1f}") == 1
            assert worker_of(client).runners == runners
            monkeypatch.setattr(ClassifierPredictor, "predict", lambda self, batch: (
                seen["predict"].append(torch.get_num_threads()) or predict(self, batch)))
            monkeypatch.setattr(ClassifierPredictor, "decode_request", lambda self, data: (
                seen["decode"].append(torch.get_num_threads()) or decode(self, data)))
            monkeypatch.setattr(ClassifierPredictor, "encode_response", lambda self, p, k: (
                seen["encode"].append(torch.get_num_threads()) or encode(self, p, k)))  # event loop
            for image in IMAGES[:3]:
                assert post(client, image).status_code == 200
    finally:
        torch.set_num_threads(before)
    assert seen == {"predict": [model_threads] * 3, "decode": [1] * 3, "encode": [1] * 3}


# --- the worker on its own, with a fake model ---

def double(batch: torch.Tensor) -> torch.Tensor:
    return batch * 2


def test_worker_batches_what_waits_and_answers_each_job() -> None:
    async def scenario() -> None:
        worker = InferenceWorker(max_batch=4, wait_s=0.5, max_queue=10)
        worker.start()
        try:
            until = time.monotonic() + WAIT_S
            # All four are queued before the worker's window closes: one batch.
            results = await asyncio.gather(*(worker.infer("k", double, torch.full((1, 2), float(i)), until)
                                             for i in range(4)))
            assert [r.tolist() for r in results] == [[[2.0 * i] * 2] for i in range(4)]
            # A job of 3 items does not fit beside 2 more: it runs next, in a batch of its own.
            results = await asyncio.gather(worker.infer("k", double, torch.ones(2, 1), until),
                                           worker.infer("k", double, torch.ones(3, 1), until))
            assert [len(r) for r in results] == [2, 3]
        finally:
            worker.stop()
        assert list(worker.history) == [("k", 4), ("k", 2), ("k", 3)]

    asyncio.run(scenario())


def test_a_lone_job_runs_at_once_and_a_batch_waits_only_for_requests_still_decoding() -> None:
    async def scenario() -> None:
        # A 2-s window: with wait_only_for_incoming, nothing here waits for it to end.
        worker = InferenceWorker(max_batch=4, wait_s=2.0, max_queue=10, wait_only_for_incoming=True)
        worker.start()
        try:
            until = time.monotonic() + WAIT_S
            start = time.monotonic()
            assert (await worker.infer("k", double, torch.ones(1, 1), until)).tolist() == [[2.0]]
            assert time.monotonic() - start < 1.0  # nothing was decoding: it ran at once
            with worker.incoming():  # a second request is decoding: the first one's batch waits
                first = asyncio.ensure_future(worker.infer("k", double, torch.ones(1, 1), until))
                await asyncio.sleep(0.3)
                assert not first.done()
                second = asyncio.ensure_future(worker.infer("k", double, torch.full((1, 1), 2.0), until))
                await asyncio.sleep(0)  # queued; its decoding ends as the block does
            results = await asyncio.gather(first, second)
            assert [r.tolist() for r in results] == [[[2.0]], [[4.0]]]
            assert time.monotonic() - start < 1.8  # the window did not run out: the batch was complete
        finally:
            worker.stop()
        assert list(worker.history) == [("k", 1), ("k", 2)]

    asyncio.run(scenario())


def test_worker_drops_an_expired_job_and_refuses_over_the_queue_bound() -> None:
    entered, opened, seen = threading.Event(), threading.Event(), []

    def gated(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.tolist())
        entered.set()
        assert opened.wait(WAIT_S)
        return batch

    async def scenario() -> None:
        worker = InferenceWorker(max_batch=1, wait_s=0, max_queue=1)
        worker.start()
        expired = sample("flowerlab_inference_expired_total", kind="k")
        try:
            until = time.monotonic() + WAIT_S
            first = asyncio.ensure_future(worker.infer("k", gated, torch.tensor([1.0]), until))
            assert await asyncio.to_thread(entered.wait, WAIT_S)
            with pytest.raises(DeadlineExceeded):  # waits behind the blocked job, past its deadline
                await worker.infer("k", gated, torch.tensor([2.0]), time.monotonic() + 0.2)
            assert worker.queued() == 0  # it gave its place up
            soon = time.monotonic() + 0.2
            late = asyncio.ensure_future(worker.infer("k", gated, torch.tensor([3.0]), soon))
            await asyncio.sleep(0)  # queued: the queue holds its one job
            assert worker.queued() == 1
            with pytest.raises(QueueFull, match=r"the inference queue is full \(1 requests wait\)"):
                await worker.infer("k", gated, torch.tensor([4.0]), time.monotonic() + WAIT_S)
            with pytest.raises(DeadlineExceeded):
                await late
            opened.set()
            assert (await first).tolist() == [1.0]
            assert (await worker.infer("k", gated, torch.tensor([5.0]), time.monotonic() + WAIT_S)).tolist() \
                == [5.0]
        finally:
            opened.set()
            worker.stop()
        assert seen == [[1.0], [5.0]]  # the expired jobs were never computed
        assert sample("flowerlab_inference_expired_total", kind="k") - expired == 2

    asyncio.run(scenario())


def test_a_job_that_expires_inside_a_forming_batch_is_not_computed() -> None:
    computed: list[list[float]] = []

    def recording(batch: torch.Tensor) -> torch.Tensor:
        computed.append(batch.tolist())
        return batch

    async def scenario() -> None:
        worker = InferenceWorker(max_batch=2, wait_s=1.0, max_queue=4)  # waits a second for a 2nd job
        worker.start()
        expired = sample("flowerlab_inference_expired_total", kind="k")
        try:
            with pytest.raises(DeadlineExceeded):
                await worker.infer("k", recording, torch.tensor([1.0]), time.monotonic() + 0.1)
            assert (await worker.infer("k", recording, torch.tensor([2.0]), time.monotonic() + WAIT_S)
                    ).tolist() == [2.0]
        finally:
            worker.stop()
        assert computed == [[2.0]]
        assert sample("flowerlab_inference_expired_total", kind="k") - expired == 1

    asyncio.run(scenario())


def test_a_second_runner_computes_the_next_batch_while_the_first_is_busy() -> None:
    entered = {1.0: threading.Event(), 2.0: threading.Event()}
    opened, batches = threading.Event(), []

    def gated(batch: torch.Tensor) -> torch.Tensor:
        batches.append(batch.tolist())
        entered[batch[0].item()].set()
        assert opened.wait(WAIT_S)
        return batch * 2

    async def scenario() -> None:
        worker = InferenceWorker(max_batch=2, wait_s=0, max_queue=4, runners=2)
        worker.start()
        try:
            until = time.monotonic() + WAIT_S
            first = asyncio.ensure_future(worker.infer("k", gated, torch.tensor([1.0]), until))
            assert await asyncio.to_thread(entered[1.0].wait, WAIT_S)
            # The first runner is held inside the model: the second takes what waits next.
            second = asyncio.ensure_future(worker.infer("k", gated, torch.tensor([2.0, 3.0]), until))
            assert await asyncio.to_thread(entered[2.0].wait, WAIT_S), "no second runner took the job"
            opened.set()
            assert [(await job).tolist() for job in (first, second)] == [[2.0], [4.0, 6.0]]
        finally:
            opened.set()
            worker.stop()
        assert batches == [[1.0], [2.0, 3.0]]
        assert not worker.alive() and worker.runners == 2

    asyncio.run(scenario())


def test_stopping_finishes_what_is_queued_and_refuses_new_jobs() -> None:
    entered, opened = threading.Event(), threading.Event()

    def gated(batch: torch.Tensor) -> torch.Tensor:
        entered.set()
        assert opened.wait(WAIT_S)
        return batch * 2

    async def scenario() -> None:
        worker = InferenceWorker(max_batch=1, wait_s=0, max_queue=4)
        worker.start()
        until = time.monotonic() + WAIT_S
        first = asyncio.ensure_future(worker.infer("k", gated, torch.ones(1), until))
        assert await asyncio.to_thread(entered.wait, WAIT_S)
        queued = [asyncio.ensure_future(worker.infer("k", gated, torch.full((1,), float(i)), until))
                  for i in (3, 4)]
        await asyncio.to_thread(wait_until, lambda: worker.queued() == 2)
        stopping = asyncio.ensure_future(asyncio.to_thread(worker.stop))
        await asyncio.to_thread(wait_until, lambda: worker._stopping)
        with pytest.raises(WorkerStopped):  # refused once stopping, while the queue drains
            await worker.infer("k", gated, torch.ones(1), until)
        assert worker.queued() == 2 and not stopping.done()
        opened.set()
        await stopping
        assert (await first).tolist() == [2.0]
        assert [(await job).tolist() for job in queued] == [[6.0], [8.0]]  # computed, not failed
        assert not worker.alive()

    asyncio.run(scenario())


# --- the app ---

def test_batched_predictions_equal_single_image_predictions(client: TestClient, served_root: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    alone = [by_class(post(client, data, k=3)) for data in IMAGES]  # the shared app: batches of one here
    count = sample("flowerlab_inference_batch_size_count", kind="predict")
    total = sample("flowerlab_inference_batch_size_sum", kind="predict")
    # The batch closes when 8 images wait; the long window only matters if fewer ever arrive. It is
    # held open even while none is decoding (a request may still be in its multipart parsing).
    with started(served_root, monkeypatch, max_batch=len(IMAGES), batch_wait_ms=WAIT_S * 1000,
                 batch_wait_for_incoming_only=False) as batched:
        with ThreadPoolExecutor(max_workers=len(IMAGES)) as pool:
            together = list(pool.map(lambda data: post(batched, data, k=3), IMAGES))
        assert list(worker_of(batched).history) == [("predict", len(IMAGES))]
    for response, expected in zip(together, alone, strict=True):
        assert by_class(response) == pytest.approx(expected, abs=1e-5)
    assert alone[0] != pytest.approx(alone[1], abs=1e-4)  # distinct images: a mix-up would show
    assert sample("flowerlab_inference_batch_size_count", kind="predict") - count == 1
    assert sample("flowerlab_inference_batch_size_sum", kind="predict") - total == len(IMAGES)


def test_full_queue_is_503_with_retry_after_and_the_service_recovers(served_root: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # One runner, so that the one gated request holds the whole worker (with more, each would have
    # to be held) and the next request waits in the queue.
    with started(served_root, monkeypatch, max_queue=1, inference_runners=1) as client, \
            ThreadPoolExecutor(2) as pool:
        gate = Gate(monkeypatch, ClassifierPredictor, "predict")
        try:
            running = pool.submit(post, client, IMAGES[0])
            gate.wait_entered()  # the worker is busy with it
            queued = pool.submit(post, client, IMAGES[1])
            wait_until(lambda: worker_of(client).queued() == 1)
            before = sample("flowerlab_http_requests_total", endpoint="/predict", status="503")
            for response in (post(client, IMAGES[2]), client.post("/generate", params={"n": 4}),
                             client.post("/reconstruct", files={"file": ("upload", IMAGES[2])})):
                assert response.status_code == 503
                assert response.headers["retry-after"] == "1"
                assert response.json() == {
                    "detail": "the inference queue is full (1 requests wait); retry later"}
            assert sample("flowerlab_http_requests_total", endpoint="/predict", status="503") - before == 1
        finally:
            gate.open()
        assert running.result().status_code == queued.result().status_code == 200
        assert post(client, IMAGES[2]).status_code == 200
        assert client.post("/generate", params={"n": 4}).status_code == 200


def test_request_past_its_deadline_is_504_and_never_computed(served_root: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with started(served_root, monkeypatch, request_timeout_s=2, inference_runners=1) as client, \
            ThreadPoolExecutor(1) as pool:
        gate = Gate(monkeypatch, ClassifierPredictor, "predict")
        expired = sample("flowerlab_inference_expired_total", kind="predict")
        try:
            running = pool.submit(post, client, IMAGES[0])
            gate.wait_entered()
            late = post(client, IMAGES[1])  # waits behind the blocked batch until its deadline
            assert late.status_code == 504
            assert late.json() == {"detail": "no answer within the request timeout"}
            assert "retry-after" not in late.headers
            assert running.result().status_code == 504  # blocked past its own deadline
        finally:
            gate.open()
        response = post(client, IMAGES[2])  # queued after the expired one: the worker has passed it
        assert response.status_code == 200
    assert gate.batches == [1, 1]  # the blocked request and the last one; the expired one was dropped
    assert sample("flowerlab_inference_expired_total", kind="predict") - expired == 1


def test_uploads_wait_for_a_decoding_thread_within_their_deadline_and_the_queue_bound(
        served_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One decoding thread, held by a slow decode (a 40-MP 16-bit PNG takes seconds): the next upload
    waits for it only until its deadline (504, never decoded), and once FLOWERLAB_MAX_QUEUE uploads
    wait for a decoding thread the next one is a 503. Before, they all waited, with no bound and no
    deadline, and the deadline started only after the decode."""
    monkeypatch.setattr(app_module, "cpu_threads", lambda: 1)
    with started(served_root, monkeypatch, max_queue=1, request_timeout_s=2) as client, \
            ThreadPoolExecutor(2) as pool:
        gate = Gate(monkeypatch, ClassifierPredictor, "decode_request")
        try:
            slow = pool.submit(post, client, IMAGES[0])
            gate.wait_entered()  # the only decoding thread is busy
            waiting = pool.submit(post, client, IMAGES[1])
            wait_until(lambda: client.app.state.service.cpu_pool.statistics().tasks_waiting == 1)
            full = post(client, IMAGES[2])
            assert full.status_code == 503 and full.headers["retry-after"] == "1"
            assert full.json() == {"detail": "1 requests already wait to be decoded; retry later"}
            late = waiting.result()
            assert late.status_code == 504
            assert late.json() == {"detail": "no answer within the request timeout"}
        finally:
            gate.open()
        assert slow.result().status_code == 504  # its decode ended past its deadline
        assert post(client, IMAGES[3]).status_code == 200
    assert gate.batches == [len(IMAGES[0]), len(IMAGES[3])]  # the one that waited was never decoded


def test_predict_runs_between_the_chunks_of_a_large_generate(client: TestClient, served_root: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    expected = client.post("/generate", params={"n": 256, "seed": 1}).content  # the shared app
    finished: list[str] = []

    def run(name: str, request: Callable[[], object]):
        response = request()
        finished.append(name)
        return response

    # One runner: the case where a /predict could wait behind the whole /generate (a second runner
    # would take it at once).
    with started(served_root, monkeypatch, max_batch=16, inference_runners=1) as batched, \
            ThreadPoolExecutor(2) as pool:
        gate = Gate(monkeypatch, VaePredictor, "decode", blocked=(0, 15))  # the first and last chunks
        try:
            generating = pool.submit(run, "generate",
                                     lambda: batched.post("/generate", params={"n": 256, "seed": 1}))
            gate.wait_entered(0)  # the first chunk is in the model
            predicting = pool.submit(run, "predict", lambda: post(batched, IMAGES[0]))
            wait_until(lambda: worker_of(batched).queued() == 1)
            gate.open(0)
            assert predicting.result().status_code == 200
            assert not generating.done()  # its last chunk cannot have run: the predict did not wait for it
        finally:
            gate.open()
        response = generating.result()
        history = list(worker_of(batched).history)
    assert response.status_code == 200 and response.content == expected  # chunks change no byte
    assert history == [("generate", 16), ("predict", 1)] + [("generate", 16)] * 15
    assert finished == ["predict", "generate"]
    assert gate.batches == [16] * 16


def test_metrics_expose_the_worker(client: TestClient) -> None:
    assert post(client, IMAGES[0]).status_code == 200
    assert client.post("/reconstruct", files={"file": ("upload", IMAGES[0])}).status_code == 200
    assert client.post("/generate", params={"n": 40}).status_code == 200
    text = client.get("/metrics").text
    for line in ("flowerlab_inference_queue_depth_count",
                 'flowerlab_inference_batch_size_count{kind="predict"}',
                 'flowerlab_inference_batch_size_bucket{kind="generate",le="16.0"}',
                 'flowerlab_inference_seconds_count{kind="reconstruct"}',
                 'flowerlab_decode_seconds_count{kind="predict"}',
                 'flowerlab_decode_seconds_count{kind="reconstruct"}'):
        assert line in text
    assert 'flowerlab_inference_batch_size_bucket{kind="generate",le="8.0"}' in text


def test_openapi_documents_503_with_retry_after_and_504(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/predict", "/reconstruct", "/generate"):
        responses = schema["paths"][path]["post"]["responses"]
        for code in ("503", "504"):
            assert responses[code]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"}
        assert "Retry-After" in responses["503"]["headers"]
        assert "FLOWERLAB_REQUEST_TIMEOUT_S" in responses["504"]["description"]
