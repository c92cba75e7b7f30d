"""The service under a real uvicorn process: it serves over HTTP, and refuses to start (one log line, no
traceback, exit status 3) on a bad hash, a missing root or a bad FLOWERLAB_* value."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from flowerlab import paths
from flowerlab.files import file_md5
from serve.__main__ import STARTUP_FAILURE, OmitRefusalTraceback
from serve.settings import StartupRefused
from tests.builders import CLASSES, encode_image, noise_image, write_lock
from tests.servers import REPO, STARTUP_SECONDS, free_port, start_uvicorn, uvicorn_server

pytestmark = pytest.mark.slow


def test_uvicorn_serves_predictions(server: tuple[str, httpx.Response], served_root: Path,
                                    tmp_path: Path) -> None:
    url, ready = server
    log = (tmp_path / "uvicorn.log").read_text()  # the server fixture's: python -m serve's output
    # The service's own INFO lines: the inference layout and why, and what it serves.
    assert " torch thread(s) (" in log and "decoding threads; batches of up to 16" in log, log
    assert f"serving {ready.json()['served']['path']} (" in log, log
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


def raw_upload(url: str, data: bytes) -> tuple[socket.socket, bytes, bytes]:
    """A connection to ``url`` and, unsent, the headers and the multipart body of a /predict of
    ``data``, for a client that sends them as slowly as it likes."""
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="f.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b--\r\n")
    headers = (f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=b\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode()
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=STARTUP_SECONDS), headers, body


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout fails the test)."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def predict_statuses(url: str) -> dict[str, float]:
    """The running service's /predict responses by status, and its rejected inputs by reason."""
    counts = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for found in family.samples:
            if found.name == "flowerlab_http_requests_total" and found.labels["endpoint"] == "/predict":
                counts[found.labels["status"]] = found.value
            elif found.name == "flowerlab_rejected_inputs_total":
                counts[found.labels["reason"]] = found.value
    return counts


def test_a_client_gone_mid_upload_is_a_499_not_a_refusal(server: tuple[str, httpx.Response]) -> None:
    """FastAPI answers a body that stopped arriving because its client hung up with a 400, as if the
    service had refused the input; it is counted as 499, nginx's status for it, and no rejection. HEAD
    of /health and of the page answer without a body."""
    url, _ready = server
    before = predict_statuses(url)
    connection, headers, body = raw_upload(url, encode_image(noise_image(), "PNG"))
    with connection:
        connection.sendall(headers + body[:100])
    deadline = time.monotonic() + 10
    while (after := predict_statuses(url)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after == {**before, "499": before.get("499", 0) + 1}
    for path in ("/health", "/"):
        response = httpx.head(f"{url}{path}", timeout=5)
        assert response.status_code == 200 and response.content == b"", path


def test_a_trickled_upload_gets_408_and_its_connection_closed(served_root: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends its headers and only part of its body (slowloris) holds its connection, and
    the spooled part, only until FLOWERLAB_UPLOAD_TIMEOUT_S after its headers: then a 408 and the
    connection closed. Meanwhile other clients are answered; an upload that arrives in pieces within
    the deadline is answered as usual."""
    monkeypatch.setenv("FLOWERLAB_UPLOAD_TIMEOUT_S", "2")
    image = encode_image(noise_image(), "PNG")
    with uvicorn_server(served_root, tmp_path / "uvicorn.log") as (url, _ready):
        stalled, headers, body = raw_upload(url, image)
        with stalled:
            stalled.sendall(headers + body[:100])
            sent = time.monotonic()
            other = httpx.post(f"{url}/predict", files={"file": ("f.png", image)}, timeout=30)
            assert other.status_code == 200, other.text
            answer = read_until_closed(stalled)
            waited = time.monotonic() - sent
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert answer.split(b"\r\n\r\n", 1)[0].lower().count(b"\r\nconnection: close") == 1, answer
        assert answer.endswith(b'{"detail":"the request body did not arrive within 2 s '
                               b'(FLOWERLAB_UPLOAD_TIMEOUT_S)"}')
        assert 1.5 < waited < 30  # the deadline runs from the headers, sent just before

        trickled, headers, body = raw_upload(url, image)
        with trickled:
            trickled.sendall(headers)
            for start in range(0, len(body), len(body) // 4 + 1):
                time.sleep(0.1)
                trickled.sendall(body[start:start + len(body) // 4 + 1])
            status_line = trickled.recv(65536).split(b"\r\n", 1)[0]
        assert status_line == b"HTTP/1.1 200 OK"
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert 'flowerlab_rejected_inputs_total{reason="upload_timeout"} 1.0' in metrics

        # Refused before its body has arrived (not multipart): the answer closes the connection, or
        # uvicorn would read the rest on, with no deadline, for as long as the client trickles it.
        early, headers, body = raw_upload(url, image)
        with early:
            early.sendall(headers.replace(b"multipart/form-data; boundary=b", b"image/png") + body[:100])
            answer = read_until_closed(early)
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 400 ") and b"\r\nconnection: close" in head, answer


def test_uvicorn_refuses_to_start_on_hash_mismatch(served_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for path in (paths.CLASSIFIER, paths.CLASSIFIER_SERVED, paths.VAE_ENCODER, paths.VAE_DECODER,
                 paths.EVALUATE_METRICS, paths.VAE_METRICS):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        os.link(served_root / path, root / path)
    write_lock(root, classifier_md5="0" * 32)
    output = refused_output(root, tmp_path / "uvicorn.log")
    assert ("refusing to start: models/classifier.pt2 has md5 " + file_md5(root / paths.CLASSIFIER)
            + " but dvc.lock records 00000000000000000000000000000000") in output
    assert "Application startup failed" in output


def refused_output(root: Path, log: Path) -> str:
    """``python -m serve``'s output, once it has refused to start: exit status 3, one ERROR line saying
    why, and no traceback."""
    process = start_uvicorn(root, free_port(), log)
    try:
        returncode = process.wait(timeout=STARTUP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"uvicorn kept running:\n{log.read_text()}") from None
    output = log.read_text()
    assert returncode == STARTUP_FAILURE, output
    assert "Traceback" not in output, output
    refusals = [line for line in output.splitlines() if "refusing to start" in line]
    assert len(refusals) == 1 and refusals[0].startswith("ERROR:    refusing to start: "), output
    return output


def test_uvicorn_refuses_to_start_without_dvc_lock(tmp_path: Path) -> None:
    output = refused_output(tmp_path / "nonexistent", tmp_path / "uvicorn.log")
    assert f"refusing to start: {tmp_path / 'nonexistent' / 'dvc.lock'} not found" in output


def test_uvicorn_refuses_a_bad_setting_in_one_line(served_root: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWERLAB_MAX_BATCH", "abc")
    output = refused_output(served_root, tmp_path / "uvicorn.log")
    assert ("ERROR:    refusing to start: FLOWERLAB_MAX_BATCH='abc': Input should be a valid integer, "
            "unable to parse string as an integer\n") in output


def test_only_the_refusal_loses_its_traceback() -> None:
    """Starlette sends uvicorn the lifespan's formatted traceback; only StartupRefused's is dropped."""
    def logged(message: str) -> bool:
        record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 0, message, None, None)
        return OmitRefusalTraceback().filter(record)

    def formatted(error: Exception) -> str:
        try:
            raise error
        except Exception:
            return traceback.format_exc()

    assert not logged(formatted(StartupRefused("refusing to start: dvc.lock not found")))
    assert logged(formatted(RuntimeError("refusing to start: dvc.lock not found")))
    assert logged(formatted(ZeroDivisionError("division by zero")))
    assert logged("Application startup failed. Exiting.")


def test_the_launcher_needs_no_torch() -> None:
    """``python -m serve --help`` and a bad setting answer at once: the launcher imports neither torch
    nor serve.app (uvicorn imports the app once it starts). With torch it took 3.7 s."""
    check = ("import sys, serve.__main__; "
             "assert 'torch' not in sys.modules and 'serve.app' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
