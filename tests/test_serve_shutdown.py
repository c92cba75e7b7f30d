"""Graceful shutdown of a real uvicorn process: SIGTERM while requests are in flight lets every one of
them finish with 200, refuses (never hangs) new connections, and the process exits 0."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.builders import encode_image, noise_image
from tests.servers import free_port, start_uvicorn, wait_ready

pytestmark = pytest.mark.slow

BATCH_WAIT_S = 3  # the worker holds a part-filled batch this long: the requests are surely in flight
IMAGES = [encode_image(noise_image(seed=seed), "PNG") for seed in range(6)]


def in_flight_requests(url: str) -> list:
    """Six /predict and two /reconstruct at once: one batch, which the batch window holds open."""
    def post(endpoint: str, data: bytes) -> httpx.Response:
        return httpx.post(f"{url}{endpoint}", files={"file": ("upload.png", data)}, timeout=60)

    pool = ThreadPoolExecutor(len(IMAGES) + 2)
    futures = [pool.submit(post, "/predict", data) for data in IMAGES]
    futures += [pool.submit(post, "/reconstruct", data) for data in IMAGES[:2]]
    pool.shutdown(wait=False)
    return futures


def test_sigterm_finishes_in_flight_requests_and_exits_0(served_root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWERLAB_BATCH_WAIT_MS", str(BATCH_WAIT_S * 1000))
    monkeypatch.setenv("FLOWERLAB_MAX_BATCH", "64")
    monkeypatch.setenv("FLOWERLAB_BATCH_WAIT_FOR_INCOMING_ONLY", "false")  # the window holds them
    log = tmp_path / "uvicorn.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_uvicorn(served_root, port, log)
    try:
        wait_ready(process, url, log)
        futures = in_flight_requests(url)
        time.sleep(1)  # the requests have arrived; the predict batch window is still open
        assert not any(future.done() for future in futures), "the requests finished too soon"
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:  # after SIGTERM: refused, or answered, but never left hanging
            late = httpx.get(f"{url}/health", timeout=5).status_code
        except httpx.ConnectError:
            late = "refused"
        assert late in ("refused", 200), late
        responses = [future.result(timeout=60) for future in futures]
        assert [r.status_code for r in responses] == [200] * len(futures), [r.text[:200] for r in responses]
        assert [r.headers["content-type"] for r in responses[len(IMAGES):]] == ["image/png"] * 2
        returncode = process.wait(timeout=60)
        elapsed = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    assert returncode == 0, f"exit code {returncode}:\n{output}"
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output
    assert elapsed < BATCH_WAIT_S + 30, elapsed
    print(f"late connection: {late}; exited {returncode} {elapsed:.1f} s after SIGTERM")
