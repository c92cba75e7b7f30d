"""The service under a real uvicorn process: it serves over HTTP, and refuses to start on a bad hash."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from flowerlab import paths
from flowerlab.export import file_md5
from serve.testing import CLASSES, shared_served_root, write_lock

REPO = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 120  # importing torch and loading the model on a busy 2-core machine


@pytest.fixture(scope="module")
def served_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_served_root(tmp_path_factory.getbasetemp())


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


@pytest.fixture
def server(served_root: Path, tmp_path: Path) -> Iterator[tuple[str, httpx.Response]]:
    with uvicorn_server(served_root, tmp_path / "uvicorn.log") as started:
        yield started


def test_uvicorn_serves_predictions(server: tuple[str, httpx.Response], served_root: Path) -> None:
    url, ready = server
    assert ready.json()["model"]["md5"] == file_md5(served_root / paths.CLASSIFIER)
    buffer = io.BytesIO()
    Image.new("RGB", (50, 30), (200, 40, 90)).save(buffer, "JPEG")
    response = httpx.post(f"{url}/predict", params={"k": 2},
                          files={"file": ("flower.jpg", buffer.getvalue(), "image/jpeg")}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2 and {p["label"] for p in predictions} <= set(CLASSES)
    assert predictions[0]["probability"] >= predictions[1]["probability"] > 0
    rejected = httpx.post(f"{url}/predict", files={"file": ("a.txt", b"hello")}, timeout=30)
    assert rejected.status_code == 415
    assert httpx.get(f"{url}/health", timeout=5).json() == {"status": "ok"}


def test_uvicorn_refuses_to_start_on_hash_mismatch(served_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for path in (paths.CLASSIFIER, paths.VAE_ENCODER, paths.VAE_DECODER, paths.EVALUATE_METRICS,
                 paths.VAE_METRICS):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        os.link(served_root / path, root / path)
    write_lock(root, classifier_md5="0" * 32)
    log = tmp_path / "uvicorn.log"
    process = start_uvicorn(root, free_port(), log)
    try:
        returncode = process.wait(timeout=STARTUP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"uvicorn kept running with a mismatching model:\n{log.read_text()}") from None
    output = log.read_text()
    assert returncode != 0
    assert ("refusing to start: models/classifier.pt2 has md5 " + file_md5(root / paths.CLASSIFIER)
            + " but dvc.lock records 00000000000000000000000000000000") in output
    assert "Application startup failed" in output
