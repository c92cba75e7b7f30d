"""/predict under load: the naive pre-worker path, the service (dynamic batching) and LitServe.

    pip install -r requirements-bench.txt    # litserve; without it the litserve row is skipped
    python -m benchmarks.serve_load [--seconds 20] [--concurrency 1 16 64] [--image-size 224]

Each server is a real process on a free local port, serving the same exported classifier:

- ``naive``: benchmarks/naive_server.py, a sync ``def /predict`` in Starlette's thread pool that
  decodes and classifies one image per request, as the service did before its inference worker;
- ``service``: ``uvicorn serve.app:app`` (repo root as cwd), default ``FLOWERLAB_*`` settings;
- ``litserve``: benchmarks/litserve_server.py, LitServe batching (16 at most, 5 ms wait) with its
  default of one inference worker, on every CPU;
- ``litserve-matched``: the same with the service's layout: as many LitServe workers as the service
  has inference runners, each on as many torch threads (skipped, with a line saying so, where that
  layout is one runner on every CPU, i.e. the ``litserve`` row).

Every server runs on uvloop and httptools, as the Docker image does (requirements.txt has both, and
uvicorn picks them); ``--h11`` runs naive and service on uvicorn's asyncio loop and pure-Python h11
parser instead, to compare. No server writes an access log.

The model is the one dvc.lock records under ``--root`` (default: this checkout, after ``dvc repro``),
or with ``--image-size N`` an untrained 102-class ResNet18 at N px (and a tiny VAE: the service
loads one) exported into a temporary root with its dvc.lock, by tests/builders.py.

For each server and concurrency, after a warm-up, exactly ``concurrency`` async clients post the same
500x375 JPEG back to back for ``--seconds``; none starts after that, and the ones in flight are
waited for. Throughput is the 200 answers that arrive within those seconds, per second (so the
drain at the end, at falling concurrency, does not count); p50 and p99 are over all 200 answers;
any other status, and any transport error (refused or dropped connection, timeout), is an error.
The client runs on the same machine, so it takes CPU from the server: compare rows of one run.

Also measured here, before any server starts: the JPEG's decode (the service's decoder), and the bare
forward pass of the program at batch 1 and 16 (median of ``--forward-calls``), with as many torch
threads as each of the service's inference runners uses, and at batch 1 on every CPU too. Ratios at
the end check the goals: service vs naive and vs both litserve rows' throughput at concurrency 16,
and service p50 at concurrency 1 over the faster of the two bare forwards at batch 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import torch

from flowerlab import paths
from flowerlab.hardware import cpu_model
from serve.batching import InferenceLayout, choose_inference_layout, cpu_threads
from serve.predictor import PHOTO_SIZE, choose_classifier, median_seconds, photo_jpeg
from serve.registry import CLASSIFIER, LoadedArtifact, ModelLoadError, load_artifacts
from serve.settings import ServeSettings

REPO = Path(__file__).resolve().parents[1]
SERVERS = ("naive", "service", "litserve", "litserve-matched")
LITSERVE_ROWS = ("litserve", "litserve-matched")
NUM_CLASSES = 102  # as the flowers data set, for --image-size
STARTUP_SECONDS = 180  # importing torch and loading (exporting) a model on a busy 2-core machine
REQUEST_TIMEOUT_S = 60.0
GOAL_CONCURRENCY = 16
LITSERVE_MISSING = "litserve: skipped, litserve is not installed (pip install -r requirements-bench.txt)"


# --- servers ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerSpec:
    name: str
    port: int
    command: list[str]
    ready_path: str


def server_spec(name: str, root: Path, port: int, h11: bool = False,
                layout: InferenceLayout | None = None) -> ServerSpec:
    """``litserve-matched`` takes the service's ``layout`` (its runners and their torch threads)."""
    # No access log: a line per request costs the server CPU, and LitServe logs none at "warning".
    uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    if h11:
        uvicorn += ["--loop", "asyncio", "--http", "h11"]
    if name == "naive":
        return ServerSpec(name, port, [*uvicorn, "benchmarks.naive_server:app"], "/ready")
    if name == "service":
        return ServerSpec(name, port, [*uvicorn, "serve.app:app"], "/ready")
    command = [sys.executable, "-m", "benchmarks.litserve_server", "--root", str(root), "--port", str(port)]
    if name == "litserve-matched":
        if layout is None:
            raise ValueError("litserve-matched needs the service's inference layout")
        command += ["--workers", str(layout.runners), "--threads", str(layout.threads)]
    return ServerSpec(name, port, command, "/health")


@contextmanager
def running(spec: ServerSpec, root: Path, log: Path,
            started: Callable[[subprocess.Popen], None] | None = None) -> Iterator[str]:
    """``spec`` started from the repo root, serving ``root``; its URL once ``ready_path`` answers 200
    (``started`` gets the process first, e.g. to watch its memory)."""
    from tests.servers import stop

    env = {**os.environ, "FLOWERLAB_ROOT": str(root)}
    with open(log, "wb") as output:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(spec.command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # LitServe's worker processes go with it
    if started is not None:
        started(process)
    url = f"http://127.0.0.1:{spec.port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{spec.name} exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + spec.ready_path, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"{spec.name} not ready after {STARTUP_SECONDS} s:\n{log.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        stop(process)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever it started and left behind


# --- load ------------------------------------------------------------------------------------------

@dataclass
class LoadResult:
    server: str
    concurrency: int
    seconds: float = 0.0  # the load window
    in_window: int = 0  # 200 answers that arrived within it
    latencies: list[float] = field(default_factory=list)  # of all the 200 answers
    errors: Counter = field(default_factory=Counter)  # status code, or transport error name

    @property
    def throughput(self) -> float:
        return self.in_window / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


def multipart_upload(url: str, jpeg: bytes) -> tuple[bytes, dict[str, str]]:
    """The body and content-type of a /predict upload of ``jpeg``, encoded once by httpx."""
    request = httpx.Request("POST", f"{url}/predict", files={"file": ("photo.jpg", jpeg, "image/jpeg")})
    return request.read(), {"content-type": request.headers["content-type"]}


async def drive(url: str, jpeg: bytes, concurrency: int, seconds: float, result: LoadResult) -> None:
    """``concurrency`` clients, each posting ``jpeg`` back to back until ``seconds`` have passed.
    The client is aiohttp's, which takes less of the shared CPU per request than httpx's."""
    body, headers = multipart_upload(url, jpeg)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        stop_at = time.perf_counter() + seconds

        async def client_loop() -> None:
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                try:
                    async with client.post(f"{url}/predict", data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                except (TimeoutError, aiohttp.ClientError) as error:  # refused, dropped, timed out
                    result.errors[type(error).__name__] += 1
                    continue
                if status == 200:
                    answered = time.perf_counter()
                    result.latencies.append(answered - sent)
                    result.in_window += answered <= stop_at
                else:
                    result.errors[str(status)] += 1

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))  # in-flight ones finish
        result.seconds = seconds


def measure(server: str, url: str, jpeg: bytes, concurrency: int, seconds: float) -> LoadResult:
    result = LoadResult(server, concurrency)
    asyncio.run(drive(url, jpeg, concurrency, seconds, result))
    return result


# --- report ----------------------------------------------------------------------------------------

def errors_text(errors: Counter) -> str:
    return ", ".join(f"{kind}: {count}" for kind, count in sorted(errors.items())) if errors else "0"


def table(results: list[LoadResult]) -> str:
    rows = [("server", "concurrency", "ok", "req/s", "p50 ms", "p99 ms", "errors")]
    for r in results:
        p50, p99 = (f"{1000 * r.percentile(q):.1f}" for q in (50, 99))
        rows.append((r.server, str(r.concurrency), str(len(r.latencies)), f"{r.throughput:.1f}", p50, p99,
                     errors_text(r.errors)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 6) else cell.rjust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))) for row in rows]
    lines = [line.rstrip() for line in lines]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def find(results: list[LoadResult], server: str, concurrency: int) -> LoadResult | None:
    return next((r for r in results if r.server == server and r.concurrency == concurrency), None)


def ratio_lines(results: list[LoadResult], forward_1: float) -> list[str]:
    c = GOAL_CONCURRENCY
    service = find(results, "service", c)
    lines = []
    for other in ("naive", *LITSERVE_ROWS):
        base = find(results, other, c)
        if service is None or base is None or not base.throughput:
            lines.append(f"service / {other} throughput at concurrency {c}: n/a (needs both rows at {c})")
        else:
            lines.append(f"service / {other} throughput at concurrency {c}: "
                         f"{service.throughput / base.throughput:.2f}x")
    single = find(results, "service", 1)
    if single is None or not single.latencies:
        lines.append("service p50 at concurrency 1 / bare forward at batch 1: n/a (needs concurrency 1)")
    else:
        lines.append(f"service p50 at concurrency 1 / fastest bare forward at batch 1: "
                     f"{single.percentile(50) / forward_1:.2f}x")
    return lines


# --- main ------------------------------------------------------------------------------------------

def litserve_available() -> bool:
    try:
        import litserve  # noqa: F401
    except ImportError:
        return False
    return True


def build_root(directory: Path, image_size: int) -> Path:
    """An untrained 102-class classifier at ``image_size`` px, a tiny VAE, and their dvc.lock."""
    from tests.builders import write_served_root  # the tests' builder: the same dvc.lock layout

    classes = tuple(f"class {i}" for i in range(NUM_CLASSES))
    return write_served_root(directory, image_size=image_size, classes=classes)


@dataclass(frozen=True)
class ModelTimes:
    num_classes: int
    image_size: int
    artifact: str  # what the service serves: the optimize stage's pick, or "exported"
    decode_s: float  # the JPEG, as the service decodes and resizes an upload
    layout: InferenceLayout  # the service's inference runners and their threads, chosen as it chooses them
    forward_1_s: float  # the program alone, on float images, on one runner's torch threads
    forward_16_s: float
    forward_1_all_s: float  # batch 1 on every CPU

    @property
    def fastest_forward_1_s(self) -> float:
        return min(self.forward_1_s, self.forward_1_all_s)


def measure_model(root: Path, loaded: LoadedArtifact, jpeg: bytes, calls: int,
                  all_threads: int) -> ModelTimes:
    """Decode on one torch thread; the service's choice of inference runners and threads, from the
    costs it measures at startup; and the bare forward pass of the artifact the service serves
    (``choose_classifier``) on one runner's threads (batch 1 and 16) and on ``all_threads`` (batch 1)."""
    settings = ServeSettings()
    predictor, _ = choose_classifier(root, loaded, settings.max_pixels, settings.max_batch)
    size = predictor.image_size
    torch.set_num_threads(1)  # as the service's decoding threads run torch, and it measures costs
    decode_s = median_seconds(lambda: predictor.decode_request(jpeg), calls)
    layout = choose_inference_layout(all_threads, settings.inference_runners, settings.inference_threads,
                                     lambda: predictor.measure_costs(settings.max_batch))
    forward = []
    for batch, count in ((1, layout.threads), (16, layout.threads), (1, all_threads)):
        torch.set_num_threads(count)
        images = torch.rand(batch, 3, size, size)
        with torch.inference_mode():
            forward.append(median_seconds(lambda images=images: predictor.module(images), calls))
    return ModelTimes(predictor.num_classes, size, predictor.artifact, decode_s, layout, *forward)


def service_layout(url: str) -> tuple[int, int]:
    """The inference runners and their torch threads the running service chose (its
    ``flowerlab_inference_runners`` and ``_threads`` gauges)."""
    gauges = {}
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("flowerlab_inference_runners", "flowerlab_inference_threads"):
            gauges[name] = int(float(value))
    if len(gauges) != 2:
        raise RuntimeError(f"the service's /metrics lacks its inference layout gauges (has {sorted(gauges)})")
    return gauges["flowerlab_inference_runners"], gauges["flowerlab_inference_threads"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load time per server and concurrency")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load, not counted, per server")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--root", type=Path, default=REPO, help="holds dvc.lock and models/ (default: repo)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="serve an untrained ResNet18 at this size instead of --root's models")
    parser.add_argument("--forward-calls", type=int, default=20, help="bare forward: median of this many")
    parser.add_argument("--h11", action="store_true",
                        help="naive and service on uvicorn's asyncio loop and h11 parser instead of the "
                             "deployed uvloop and httptools")
    parser.add_argument("--logs", type=Path, default=None, help="keep server logs here (default: temporary)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[LoadResult]:
    args = parse_args(argv)
    servers = list(args.servers)
    if not litserve_available() and any(name in servers for name in LITSERVE_ROWS):
        print(LITSERVE_MISSING, flush=True)
        servers = [name for name in servers if name not in LITSERVE_ROWS]
    with tempfile.TemporaryDirectory(prefix="serve_load_") as temporary:
        temporary = Path(temporary)
        if args.image_size is not None:
            print(f"exporting an untrained ResNet18 at {args.image_size} px ...", flush=True)
            root = build_root(temporary / "root", args.image_size)
        else:
            root = args.root.resolve()
        jpeg = photo_jpeg()
        logs = args.logs or temporary / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        try:
            loaded = load_artifacts(root, (CLASSIFIER,))[CLASSIFIER.name]
        except ModelLoadError as error:
            raise SystemExit(f"{error}\n(or pass --image-size 224 to serve an untrained model)") from None

        cpus = cpu_threads()
        model = measure_model(root, loaded, jpeg, args.forward_calls, cpus)
        layout = model.layout
        if "litserve-matched" in servers and (layout.runners, layout.threads) == (1, cpus):
            print(f"litserve-matched: skipped, the service's layout (1 runner on {cpus} threads) is the "
                  f"litserve row's", flush=True)
            servers.remove("litserve-matched")
        print(f"CPU: {cpu_model()}; {os.cpu_count()} CPUs, torch threads: service {layout.runners} "
              f"inference runner(s) on {layout.threads} each and {cpus} decoding, litserve 1 worker on "
              f"{cpus}, litserve-matched {layout.runners} on {layout.threads} each, naive torch's default")
        print(f"service's inference layout, as it chooses it: {layout.runners} runner(s) on "
              f"{layout.threads} torch thread(s): {layout.reason}")
        print(f"model: {root / paths.CLASSIFIER} md5 {loaded.md5}, {model.num_classes} classes, "
              f"{model.image_size} px{' (untrained)' if args.image_size is not None else ''}")
        print(f"upload: {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG q90, {len(jpeg)} bytes; decode + resize "
              f"{1000 * model.decode_s:.2f} ms (median of {args.forward_calls})")
        print(f"bare forward of the served artifact ({model.artifact}) on {layout.threads} torch threads: "
              f"batch 1 {1000 * model.forward_1_s:.2f} ms, batch 16 "
              f"{1000 * model.forward_16_s:.2f} ms ({1000 * model.forward_16_s / 16:.2f} ms/image); "
              f"batch 1 on {cpus}: {1000 * model.forward_1_all_s:.2f} ms "
              f"(median of {args.forward_calls})", flush=True)
        del loaded

        from tests.servers import free_port

        results = []
        for name in servers:
            spec = server_spec(name, root, free_port(), args.h11, layout)
            with running(spec, root, logs / f"{name}.log") as url:
                if name == "naive":
                    naive_threads = httpx.get(url + "/ready", timeout=5).json()["torch_threads"]
                    print(f"naive: {naive_threads} torch threads", flush=True)
                if name == "service":
                    runners, threads = service_layout(url)
                    print(f"service: {runners} inference runner(s) on {threads} torch thread(s)", flush=True)
                if args.warmup > 0:
                    measure(name, url, jpeg, max(args.concurrency), args.warmup)
                for concurrency in args.concurrency:
                    result = measure(name, url, jpeg, concurrency, args.seconds)
                    print(f"{name} at concurrency {concurrency}: {len(result.latencies)} ok, "
                          f"{sum(result.errors.values())} errors", flush=True)
                    results.append(result)

    print()
    print(table(results))
    print()
    for line in ratio_lines(results, model.fastest_forward_1_s):
        print(line)
    return results


if __name__ == "__main__":
    main()
