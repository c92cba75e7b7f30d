"""Sustained mixed load on the real service: errors by status, latency, and resident memory.

    python -m benchmarks.soak [--seconds 60] [--concurrency 32] [--image-size 224 | --root DIR]

It starts the service (``uvicorn serve.app:app``) as a real process on a free port, serving the
models dvc.lock records (after ``dvc repro``) or, with ``--image-size``, an untrained classifier
built as ``benchmarks/serve_load.py`` does. ``--concurrency`` clients then send requests back to
back for ``--seconds``, each drawn (from a fixed seed) from this mix:

- 55% ``/predict`` and 15% ``/reconstruct`` with a 500x375 JPEG; 15% ``/generate`` of 16 samples;
- 15% bad requests that must get their 4xx: text named ``.jpg`` (415), a truncated JPEG (422),
  ``/generate?n=0`` (422).

It prints, per kind of request, the count of each status and the p50 / p99 latency of its expected
answers; the count of 5xx, of unexpected statuses and of dropped connections (transport errors);
and the server's resident memory (VmRSS) after a warm-up and at the end. Goals: zero 5xx, zero
dropped connections, RSS growth under 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

from benchmarks.serve_load import REPO, build_root, photo_jpeg, running, server_spec
from flowerlab.hardware import cpu_model

REQUEST_TIMEOUT_S = 60.0


def request_mix(jpeg: bytes) -> list[tuple[str, float, str, str, dict, int]]:
    """(kind, weight, method, path, request kwargs, expected status)."""
    def upload(data: bytes, name: str, content_type: str) -> dict:
        return {"files": {"file": (name, data, content_type)}}

    return [
        ("predict", 0.55, "POST", "/predict", upload(jpeg, "photo.jpg", "image/jpeg"), 200),
        ("reconstruct", 0.15, "POST", "/reconstruct", upload(jpeg, "photo.jpg", "image/jpeg"), 200),
        ("generate", 0.15, "POST", "/generate?n=16", {}, 200),
        ("text as .jpg", 0.05, "POST", "/predict", upload(b"not a photo\n" * 20, "x.jpg", "image/jpeg"), 415),
        ("truncated jpeg", 0.05, "POST", "/predict",
         upload(jpeg[: len(jpeg) // 3], "t.jpg", "image/jpeg"), 422),
        ("generate n=0", 0.05, "POST", "/generate?n=0", {}, 422),
    ]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def soak(url: str, jpeg: bytes, concurrency: int, seconds: float, seed: int = 0):
    mix = request_mix(jpeg)
    weights = [entry[1] for entry in mix]
    statuses: dict[str, Counter] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    unexpected: Counter = Counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=REQUEST_TIMEOUT_S) as client:
        stop_at = time.perf_counter() + seconds

        async def client_loop(rng: random.Random) -> None:
            while time.perf_counter() < stop_at:
                kind, _, method, path, kwargs, expected = rng.choices(mix, weights)[0]
                sent = time.perf_counter()
                try:
                    response = await client.request(method, path, **kwargs)
                except httpx.TransportError as error:  # refused, dropped, timed out
                    statuses[kind][type(error).__name__] += 1
                    continue
                statuses[kind][response.status_code] += 1
                if response.status_code == expected:
                    latencies[kind].append(time.perf_counter() - sent)
                else:
                    unexpected[(kind, response.status_code)] += 1

        await asyncio.gather(*(client_loop(random.Random(seed + i)) for i in range(concurrency)))
    return statuses, latencies, unexpected


def report(statuses, latencies, unexpected, rss_start: float, rss_end: float, seconds: float) -> list[str]:
    lines = [f"{'request':16s} {'count':>6s} {'p50 ms':>8s} {'p99 ms':>8s}  statuses"]
    for kind in statuses:
        times = latencies.get(kind) or [float("nan")]
        counts = ", ".join(f"{status}: {n}" for status, n in sorted(statuses[kind].items(), key=str))
        lines.append(f"{kind:16s} {sum(statuses[kind].values()):6d} {1000 * np.percentile(times, 50):8.1f} "
                     f"{1000 * np.percentile(times, 99):8.1f}  {counts}")
    total = sum(sum(c.values()) for c in statuses.values())
    server_errors = sum(n for c in statuses.values() for s, n in c.items() if isinstance(s, int) and s >= 500)
    dropped = sum(n for c in statuses.values() for s, n in c.items() if isinstance(s, str))
    lines += [f"total {total} requests in {seconds:.0f} s ({total / seconds:.1f}/s); 5xx: {server_errors}; "
              f"dropped connections: {dropped}; unexpected statuses: {dict(unexpected) or 0}",
              f"server RSS: {rss_start:.0f} MB after warm-up, {rss_end:.0f} MB at the end "
              f"({100 * (rss_end / rss_start - 1):+.1f}%)"]
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the RSS baseline")
    parser.add_argument("--root", type=Path, default=REPO, help="holds dvc.lock and models/ (default: repo)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="serve an untrained classifier at this size instead of --root's models")
    args = parser.parse_args(argv)
    from tests.servers import free_port

    with tempfile.TemporaryDirectory() as temporary:
        root = build_root(Path(temporary) / "root", args.image_size) if args.image_size else args.root
        processes: list[subprocess.Popen] = []
        spec = server_spec("service", root, free_port())
        print(f"CPU: {cpu_model()}; soak of {spec.name} for {args.seconds:.0f} s at concurrency "
              f"{args.concurrency}", flush=True)
        with running(spec, root, Path(temporary) / "service.log", processes.append) as url:
            jpeg = photo_jpeg()
            asyncio.run(soak(url, jpeg, args.concurrency, args.warmup, seed=10_000))
            rss_start = rss_mb(processes[0].pid)
            results = asyncio.run(soak(url, jpeg, args.concurrency, args.seconds))
            rss_end = rss_mb(processes[0].pid)
    lines = report(*results, rss_start, rss_end, args.seconds)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
