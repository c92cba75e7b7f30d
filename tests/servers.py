"""Real local servers the tests start: uvicorn on a free port, a GCS emulator; an event-loop recorder."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 120  # importing torch and loading the model on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_uvicorn(root: Path, port: int, log: Path, cwd: Path = REPO) -> subprocess.Popen:
    """``python -m serve`` (uvicorn, as the Dockerfile runs it) run from ``cwd`` (the code), serving
    ``root`` (dvc.lock, models)."""
    env = {**os.environ, "FLOWERLAB_ROOT": str(root)}
    with open(log, "wb") as output:  # a file, not a pipe: a full pipe would block the server
        return subprocess.Popen([sys.executable, "-m", "serve", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=cwd, env=env, stdout=output,
                                stderr=subprocess.STDOUT)


def wait_ready(process: subprocess.Popen, url: str, log: Path) -> httpx.Response:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"uvicorn exited with {process.returncode}:\n{log.read_text()}"
        try:
            response = httpx.get(f"{url}/ready", timeout=5)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.25)
    raise AssertionError(f"uvicorn not ready after {STARTUP_SECONDS} s:\n{log.read_text()}")


@contextmanager
def uvicorn_server(root: Path, log: Path, cwd: Path = REPO) -> Iterator[tuple[str, httpx.Response]]:
    """A uvicorn process serving ``root`` on a free port: its URL and first /ready answer."""
    port = free_port()
    process = start_uvicorn(root, port, log, cwd)
    try:
        url = f"http://127.0.0.1:{port}"
        yield url, wait_ready(process, url, log)
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def gcs_emulator(data_dir: Path, bucket: str, log: Path) -> Iterator[str]:
    """A real GCS API on a free local port (the gcp-storage-emulator package) holding ``bucket``:
    its URL, to set as ``STORAGE_EMULATOR_HOST`` for gcsfs (which DVC's gs remote uses)."""
    port = free_port()
    executable = Path(sys.executable).with_name("gcp-storage-emulator")
    with open(log, "wb") as output:
        process = subprocess.Popen([str(executable), "--data-dir", str(data_dir), "start", "--host",
                                    "127.0.0.1", "--port", str(port), "--default-bucket", bucket],
                                   stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"emulator exited:\n{log.read_text()}"
            try:
                if httpx.get(f"{url}/storage/v1/b/{bucket}", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"emulator not up after 60 s:\n{log.read_text()}"
            time.sleep(0.2)
        yield url
    finally:
        stop(process)


def record_event_loop_calls(monkeypatch, cls: type, method: str) -> list[bool]:
    """Patch ``cls.method`` to note, per call, whether it ran on an asyncio event loop."""
    calls: list[bool] = []
    original = getattr(cls, method)

    def recording(self, *args, **kwargs):
        try:
            asyncio.get_running_loop()
            calls.append(True)
        except RuntimeError:
            calls.append(False)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, recording)
    return calls
