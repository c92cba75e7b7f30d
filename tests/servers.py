"""Test helpers for the service: a real uvicorn process on a free port, and an event-loop recorder."""

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


def start_uvicorn(root: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "FLOWERLAB_ROOT": str(root)}
    with open(log, "wb") as output:  # a file, not a pipe: a full pipe would block the server
        return subprocess.Popen([sys.executable, "-m", "uvicorn", "serve.app:app", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=REPO, env=env, stdout=output,
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
def uvicorn_server(root: Path, log: Path) -> Iterator[tuple[str, httpx.Response]]:
    """A uvicorn process serving ``root`` on a free port: its URL and first /ready answer."""
    port = free_port()
    process = start_uvicorn(root, port, log)
    try:
        url = f"http://127.0.0.1:{port}"
        yield url, wait_ready(process, url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
