"""The FastAPI service in-process: predictions, bad input, readiness, metrics and startup refusal."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import REGISTRY
from torchvision.transforms.v2 import functional as F

from flowerlab import paths
from flowerlab.drift import build_reference, write_reference
from flowerlab.export import load_program, load_scripted
from flowerlab.files import file_md5
from flowerlab.imaging import decode_image, square_resize
from serve.app import create_app
from serve.drift import load_reference
from serve.predictor import ClassifierPredictor, decode_upload
from serve.registry import CLASSIFIER, LoadedArtifact, ModelLoadError, locked_output, read_test_metrics
from serve.rejections import (
    MULTIPART_OVERHEAD_BYTES,
    InputRejected,
    UploadLimit,
    UploadLimits,
    rejection_response,
)
from tests.builders import (
    CLASSES,
    IMAGE_SIZE,
    TEST_METRICS,
    VAE_IMAGE_SIZE,
    VAE_LATENT_DIM,
    VAE_METRICS,
    classifier_meta,
    copy_root,
    encode_image,
    noise_image,
    png_declaring,
    write_lock,
)
from tests.servers import record_event_loop_calls

FORMATS = ["JPEG", "PNG", "WEBP", "BMP", "GIF"]
BAD_INPUTS = ["text", "tiff", "truncated_jpeg", "png_cut_header", "empty", "pillow_bomb",
              "pillow_warning_bomb", "over_max_pixels"]


def post(client: TestClient, data: bytes, **params: object):
    return client.post("/predict", params=params, files={"file": ("upload", data)})


def by_class(response) -> list[float]:
    """A k=num_classes response's probabilities, in class-id order."""
    probability = {p["class_id"]: p["probability"] for p in response.json()["predictions"]}
    return [probability[i] for i in range(len(CLASSES))]


@pytest.fixture(scope="module")
def reference(served_root: Path) -> torch.nn.Module:
    """The served classifier (the optimize stage's file), loaded separately to check the service against."""
    module, meta = load_scripted(served_root / paths.CLASSIFIER_SERVED)
    assert meta["image_size"] == IMAGE_SIZE
    return module


@pytest.fixture(scope="module")
def exported(served_root: Path) -> torch.nn.Module:
    """The portable exported program: its batch is dynamic, its image size is not."""
    return load_program(served_root / paths.CLASSIFIER)[0]


def expected_probabilities(module: torch.nn.Module, data: bytes) -> list[float]:
    """Evaluation's path, written out: decode_image, square_resize, /255, model, softmax."""
    image = square_resize(decode_image(data), IMAGE_SIZE)
    with torch.inference_mode():
        logits, _ = module(image.unsqueeze(0).float() / 255)
    return logits.softmax(dim=1)[0].tolist()


JPEG = encode_image(noise_image(), "JPEG")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_every_format(client: TestClient, reference: torch.nn.Module, fmt: str) -> None:
    data = encode_image(noise_image(), fmt)
    response = post(client, data, k=len(CLASSES))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert sorted(p["label"] for p in predictions) == sorted(CLASSES)
    assert all(CLASSES[p["class_id"]] == p["label"] for p in predictions)
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert by_class(response) == pytest.approx(expected_probabilities(reference, data), abs=1e-6)


def test_prediction_uses_square_resize_not_a_squash(client: TestClient, reference: torch.nn.Module) -> None:
    data = encode_image(noise_image(80, 32, seed=3), "PNG")  # wide: centre crop and squash differ
    served = by_class(post(client, data, k=3))
    squashed = F.resize(F.pil_to_tensor(decode_image(data)), [IMAGE_SIZE, IMAGE_SIZE], antialias=True)
    with torch.inference_mode():
        other = reference(squashed.unsqueeze(0).float() / 255)[0].softmax(dim=1)[0].tolist()
    assert served == pytest.approx(expected_probabilities(reference, data), abs=1e-6)
    assert max(abs(served[i] - other[i]) for i in range(3)) > 1e-4


def test_gif_is_classified_by_its_first_frame(client: TestClient, reference: torch.nn.Module) -> None:
    first, second = noise_image(seed=1), noise_image(seed=2)
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[second])
    served = by_class(post(client, buffer.getvalue(), k=3))
    expected_first = expected_probabilities(reference, buffer.getvalue())
    with Image.open(io.BytesIO(buffer.getvalue())) as gif:
        gif.seek(1)
        expected_second = expected_probabilities(reference, encode_image(gif.convert("RGB"), "PNG"))
    assert served == pytest.approx(expected_first, abs=1e-6)
    assert served != pytest.approx(expected_second, abs=1e-4)


def test_k_defaults_to_all_classes_when_fewer_than_five(client: TestClient) -> None:
    data = encode_image(noise_image(), "PNG")
    everything = post(client, data).json()["predictions"]
    assert len(everything) == len(CLASSES)
    top = post(client, data, k=1).json()["predictions"]
    assert top == everything[:1]


@pytest.mark.parametrize("k", [0, -1, len(CLASSES) + 1])
def test_k_out_of_range_is_422(client: TestClient, k: int) -> None:
    response = post(client, encode_image(noise_image(), "PNG"), k=k)
    assert response.status_code == 422
    assert response.json() == {"detail": f"k must be between 1 and 3 (the number of classes), got {k}"}


@pytest.mark.parametrize(("data", "status", "message"), [
    (b"just some text, not an image", 415, "not an image in a supported format"),
    (encode_image(noise_image(), "TIFF"), 415, "not an image in a supported format"),
    (JPEG[: len(JPEG) // 2], 422, "corrupt or truncated image: image file is truncated"),
    (encode_image(noise_image(), "PNG")[:20], 422, "corrupt image header"),
    (b"", 422, "the uploaded file is empty"),
    # Over Pillow's limits (twice 89478485: it will not open the file; 89478485: it warns): the message
    # names the service's FLOWERLAB_MAX_PIXELS, not Pillow's.
    (png_declaring(20000, 20000), 413, "image is 400000000 pixels, more than the limit of 40000000 "
                                       "(a possible decompression bomb)"),
    (png_declaring(10000, 10000), 413, "image is 10000x10000 = 100000000 pixels, more than the limit of "
                                       "40000000"),
    (png_declaring(8000, 6000), 413, "48000000 pixels, more than the limit of 40000000"),
], ids=BAD_INPUTS)
def test_bad_input_is_a_clear_4xx_and_service_keeps_serving(client: TestClient, data: bytes, status: int,
                                                            message: str) -> None:
    response = post(client, data)
    assert response.status_code == status
    assert message in response.json()["detail"]
    assert post(client, encode_image(noise_image(), "PNG")).status_code == 200


def test_pixel_limit_over_pillows_names_pillows() -> None:
    """A FLOWERLAB_MAX_PIXELS above Pillow's own limit: Pillow's refusal names Pillow's limit."""
    with pytest.raises(InputRejected, match="image is 100000000 pixels, more than Pillow's decompression "
                                            "bomb limit of 89478485"):
        decode_upload(png_declaring(10000, 10000), IMAGE_SIZE, 200_000_000)


@pytest.mark.parametrize("endpoint", ["/predict", "/reconstruct"])
def test_missing_file_field_is_422(client: TestClient, endpoint: str) -> None:
    response = client.post(endpoint, files={"other": ("flower.jpg", JPEG, "image/jpeg")})  # multipart
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


@pytest.mark.parametrize("endpoint", ["/predict", "/reconstruct"])
@pytest.mark.parametrize(("body", "content_type"), [
    ({"content": JPEG}, "image/jpeg"),  # curl --data-binary @rose.jpg -H 'Content-Type: image/jpeg'
    ({"json": {"file": "rose.jpg"}}, "application/json"),
    ({"data": {"file": "rose.jpg"}}, "application/x-www-form-urlencoded"),
    ({}, None),
], ids=["raw_jpeg", "json", "urlencoded", "no_body"])
def test_a_body_that_is_not_multipart_is_400(client: TestClient, endpoint: str, body: dict,
                                             content_type: str | None) -> None:
    before = sample("flowerlab_rejected_inputs_total", reason="not_multipart")
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(endpoint, params={"k": 2}, headers=headers, **body)
    assert response.status_code == 400
    got = f"Content-Type {content_type}" if content_type else "no Content-Type"
    assert response.json() == {"detail": f"send the image as multipart/form-data in a field named 'file' "
                                         f"(got {got})"}
    assert sample("flowerlab_rejected_inputs_total", reason="not_multipart") - before == 1


def test_the_multipart_check_runs_on_the_event_loop() -> None:
    """FastAPI runs a plain ``def`` dependency in its thread pool: one thread hop more per upload,
    measured 6-10% fewer requests/s at concurrency 16 (README)."""
    import inspect

    from serve.rejections import require_multipart

    assert inspect.iscoroutinefunction(require_multipart)


def test_upload_size_limits(served_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWERLAB_ROOT", str(served_root))
    monkeypatch.setenv("FLOWERLAB_MAX_UPLOAD_BYTES", "2000")
    small, large = encode_image(noise_image(8, 8), "PNG"), encode_image(noise_image(), "PNG")
    assert len(small) < 2000 < len(large)
    before = sample("flowerlab_http_requests_total", endpoint="/predict", status="413")
    with TestClient(create_app()) as limited:
        assert post(limited, small).status_code == 200
        response = post(limited, large)  # body within the framing allowance, file over the limit
        assert response.status_code == 413
        assert response.json() == {"detail": "uploaded file is larger than the limit of 2000 bytes"}
        # The body's limit is the user's setting plus the framing, and says so.
        over_body = {"detail": "request body is larger than the limit of 2000 bytes "
                               "(FLOWERLAB_MAX_UPLOAD_BYTES) plus 65536 bytes of multipart framing"}
        huge = b"x" * 100_000
        response = post(limited, huge)  # Content-Length over the limit: refused unread
        assert response.status_code == 413
        assert response.json() == over_body
        chunked = limited.post("/predict", content=iter([huge[:50_000], huge[50_000:]]),
                               headers={"content-type": "multipart/form-data; boundary=b"})
        assert "content-length" not in chunked.request.headers
        assert chunked.status_code == 413
        assert chunked.json() == over_body
        assert post(limited, small).status_code == 200
    assert sample("flowerlab_http_requests_total", endpoint="/predict", status="413") - before == 3


def test_declared_content_length_over_the_limit_is_refused_unread() -> None:
    sent: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("the body was read")

    async def send(message: dict) -> None:
        sent.append(message)

    async def endpoint(scope: dict, receive, send) -> None:
        await receive()

    declared = str(10 + MULTIPART_OVERHEAD_BYTES + 1).encode()
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-length", declared)]}
    asyncio.run(UploadLimit(endpoint, limits=lambda scope: UploadLimits(10, 60.0))(scope, receive, send))
    assert sent[0]["status"] == 413
    assert sent[1]["body"] == (b'{"detail":"request body is larger than the limit of 10 bytes '
                               b'(FLOWERLAB_MAX_UPLOAD_BYTES) plus 65536 bytes of multipart framing"}')


def test_a_body_still_arriving_past_the_upload_timeout_is_408_and_closes() -> None:
    """The deadline covers each read until the body's last part, and none after it (a wait for the
    client to disconnect is not an upload)."""
    parts = [{"type": "http.request", "body": b"x" * 10, "more_body": True}]

    async def receive() -> dict:
        if parts:
            return parts.pop(0)
        await asyncio.sleep(0.3)  # past the 0.1 s deadline
        return {"type": "http.request", "body": b"y", "more_body": False}

    raised: list[InputRejected] = []
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def read_body(scope: dict, receive, send) -> None:  # answering as the app's handler does
        try:
            while (await receive()).get("more_body"):
                pass
        except InputRejected as error:
            raised.append(error)
            await rejection_response(error)(scope, receive, send)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-length", b"11")]}
    limits = UploadLimits(1000, 0.1)
    asyncio.run(UploadLimit(read_body, limits=lambda scope: limits)(scope, receive, send))
    [error] = raised
    assert error.status_code == 408
    assert error.detail == "the request body did not arrive within 0.1 s (FLOWERLAB_UPLOAD_TIMEOUT_S)"
    assert [value for name, value in sent[0]["headers"] if name == b"connection"] == [b"close"]  # once

    complete = [{"type": "http.request", "body": b"x", "more_body": False}]

    async def then_disconnect() -> dict:
        if complete:
            return complete.pop(0)
        await asyncio.sleep(0.3)
        return {"type": "http.disconnect"}

    async def read_then_wait_for_disconnect(scope: dict, receive, send) -> None:
        assert (await receive())["body"] == b"x"
        assert (await receive())["type"] == "http.disconnect"  # 0.3 s later, past the deadline: no 408

    waiting = UploadLimit(read_then_wait_for_disconnect, limits=lambda scope: limits)
    asyncio.run(waiting(scope, then_disconnect, None))


@pytest.mark.parametrize("headers, closes", [
    ([(b"content-length", b"5000")], True),  # a body the app never read: uvicorn would read it on, unbounded
    ([(b"transfer-encoding", b"chunked")], True),
    ([(b"content-length", b"0")], False),  # no body: keep-alive as usual
    ([], False),
])
def test_a_response_before_the_whole_body_closes_the_connection(headers: list, closes: bool) -> None:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def answers_at_once(scope: dict, receive, send) -> None:  # e.g. the not-multipart 400
        start = {"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"text/plain")]}
        await send(start)
        await send({"type": "http.response.body", "body": b"no"})

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
    limited = UploadLimit(answers_at_once, limits=lambda scope: UploadLimits(10_000, 60.0))
    asyncio.run(limited(scope, None, send))
    assert ((b"connection", b"close") in sent[0]["headers"]) == closes
    assert (b"content-type", b"text/plain") in sent[0]["headers"]


@pytest.mark.parametrize("endpoint", ["/predict", "/reconstruct"])
def test_several_files_are_a_422_not_the_last_one_silently(client: TestClient, endpoint: str) -> None:
    """FastAPI would take the last part named 'file' and drop the others unseen."""
    before = sample("flowerlab_rejected_inputs_total", reason="several_files")
    image = encode_image(noise_image(), "PNG")
    response = client.post(endpoint, files=[("file", ("a.png", image)), ("file", ("b.png", image))])
    assert response.status_code == 422
    assert response.json() == {"detail": "send one image per request, in one part named 'file' "
                                         "(got 2 parts named 'file')"}
    assert sample("flowerlab_rejected_inputs_total", reason="several_files") - before == 1
    assert client.post(endpoint, files=[("file", ("a.png", image)), ("other", ("b.png", image))]
                       ).status_code == 200


def test_malformed_multipart_is_a_counted_400_and_routing_errors_are_not(client: TestClient) -> None:
    before = (sample("flowerlab_rejected_inputs_total", reason="malformed_body"),
              sample("flowerlab_http_requests_total", endpoint="/predict", status="400"))
    response = client.post("/predict", content=b"--b\r\n", headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400
    assert response.json() == {"detail": "Missing boundary in multipart."}  # Starlette's message
    nameless = (b'--b\r\nContent-Disposition: form-data; filename="f.png"\r\n\r\nxx\r\n--b--\r\n')
    response = client.post("/predict", content=nameless,
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 400 and "name" in response.json()["detail"]
    after = (sample("flowerlab_rejected_inputs_total", reason="malformed_body"),
             sample("flowerlab_http_requests_total", endpoint="/predict", status="400"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [2, 2]
    # Not inputs the service refused: no route (404), the wrong method (405).
    assert client.get("/no-such-page").status_code == 404
    assert client.get("/predict").status_code == 405
    assert sample("flowerlab_rejected_inputs_total", reason="malformed_body") == after[0]


def test_health_and_the_page_answer_head(client: TestClient) -> None:
    """Uptime checkers often send HEAD."""
    assert client.head("/health").status_code == 200
    page = client.head("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_an_upload_sent_wrong_gets_a_422_that_says_what_to_send_not_the_upload(client: TestClient) -> None:
    """A file sent as a plain form field (``curl -F 'file=<photo.jpg'``: no filename), and a body cut
    before its closing boundary. FastAPI's own 422 echoed the whole upload back as ``input``."""
    image = encode_image(noise_image(200, 200), "PNG")
    plain_field = b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + image + b"\r\n--b--\r\n"
    cut_short = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="f.png"\r\n\r\n'
                 + image[:500])
    expected = {
        plain_field: "the field 'file' must be a file part with a filename (curl -F 'file=@photo.jpg'), "
                     "not a plain form field",
        cut_short: "Field required: no complete multipart part named 'file' (none was sent, or the body "
                   "ended before its closing boundary)",
    }
    for body, message in expected.items():
        response = client.post("/predict", content=body,
                               headers={"content-type": "multipart/form-data; boundary=b"})
        assert response.status_code == 422
        [problem] = response.json()["detail"]
        assert problem["loc"] == ["body", "file"] and problem["msg"] == message
        assert "input" not in problem and len(response.content) < 1000
    # Query parameters keep FastAPI's messages, input included.
    [problem] = post(client, image, k="abc").json()["detail"]
    assert problem["loc"] == ["query", "k"] and problem["input"] == "abc"


def test_health_and_ready(client: TestClient, served_root: Path) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "model": {"path": "models/classifier.pt2", "md5": file_md5(served_root / paths.CLASSIFIER),
                  "source": "synthetic", "architecture": "resnet18", "image_size": IMAGE_SIZE,
                  "num_classes": 3, "best_val_acc": 0.75},
        "served": {"path": paths.CLASSIFIER_SERVED, "md5": file_md5(served_root / paths.CLASSIFIER_SERVED),
                   "artifact": "int8", "fallback_reason": None},
        "test_metrics": TEST_METRICS,
        "vae": {"encoder": {"path": paths.VAE_ENCODER, "md5": file_md5(served_root / paths.VAE_ENCODER)},
                "decoder": {"path": paths.VAE_DECODER, "md5": file_md5(served_root / paths.VAE_DECODER)},
                "source": "synthetic", "architecture": "conv-vae", "latent_dim": VAE_LATENT_DIM,
                "image_size": VAE_IMAGE_SIZE, "beta": 1.0, "loss": "mse", "best_val_loss": 123.5},
        "vae_metrics": VAE_METRICS}


def test_not_ready_before_startup() -> None:
    unstarted = TestClient(create_app())  # no `with`: the lifespan has not run
    assert unstarted.get("/health").status_code == 200
    assert unstarted.get("/ready").status_code == 503
    response = post(unstarted, encode_image(noise_image(), "PNG"))
    assert (response.status_code, response.json()) == (503, {"detail": "model not loaded yet"})


def test_test_metrics_only_when_dvc_lock_vouches_for_them(served_root: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    md5 = file_md5(served_root / paths.CLASSIFIER)
    assert read_test_metrics(served_root, md5) == TEST_METRICS
    assert read_test_metrics(served_root, "f" * 32) is None  # evaluated a different model
    assert "the evaluate stage ran on models/classifier.pt2 md5 " + md5 in caplog.text
    stale = copy_root(served_root, tmp_path / "stale")
    (stale / paths.EVALUATE_METRICS).unlink()
    (stale / paths.EVALUATE_METRICS).write_text('{"accuracy": 0.9}')  # not the file dvc.lock records
    assert read_test_metrics(stale, md5) is None
    assert "not reporting metrics/evaluate.json: metrics/evaluate.json has md5" in caplog.text
    (stale / paths.EVALUATE_METRICS).unlink()
    assert read_test_metrics(stale, md5) is None


def break_hash(root: Path) -> str:
    write_lock(root, classifier_md5="0" * 32)
    return "models/classifier.pt2 has md5 "


def remove_model(root: Path) -> str:
    (root / paths.CLASSIFIER).unlink()
    return "models/classifier.pt2 is missing"


def remove_lock(root: Path) -> str:
    (root / paths.DVC_LOCK).unlink()
    return "dvc.lock not found"


@pytest.mark.parametrize("damage", [break_hash, remove_model, remove_lock])
def test_refuses_to_start(served_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          caplog: pytest.LogCaptureFixture, damage) -> None:
    root = copy_root(served_root, tmp_path / "root")
    message = damage(root)
    monkeypatch.setenv("FLOWERLAB_ROOT", str(root))
    with pytest.raises(RuntimeError, match=f"refusing to start: .*{message}"), TestClient(create_app()):
        pass
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "serve.app"]
    assert len(errors) == 1 and errors[0].startswith("refusing to start: ") and message in errors[0]
    if damage is break_hash:
        assert "but dvc.lock records 00000000000000000000000000000000" in errors[0]


def test_a_missing_drift_reference_that_dvc_lock_records_is_a_warning(
        served_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="serve.drift")
    older = copy_root(served_root, tmp_path / "older")  # a lock from before the reference: INFO
    assert load_reference(older)[0] is None
    assert [r.levelname for r in caplog.records if "drift monitoring is off" in r.getMessage()] == ["INFO"]
    caplog.clear()
    root = copy_root(served_root, tmp_path / "root")
    write_reference(root / paths.DRIFT_REFERENCE,
                    build_reference(np.zeros((2, 3, 4, 4), np.uint8), np.full((2, 3), 1 / 3)))
    write_lock(root)
    (root / paths.DRIFT_REFERENCE).unlink()
    reference, reason = load_reference(root)
    assert reference is None and f"{paths.DRIFT_REFERENCE} is missing" in reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [f"drift monitoring is off: {reason}"]


def test_locked_output_finds_the_stage_output(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n  train:\n    outs:\n    - path: ./models/classifier.pt2\n"
                    "      hash: md5\n      md5: 0123abcd\n      size: 4\n")
    assert locked_output(lock, "models/classifier.pt2") == "0123abcd"
    assert locked_output(lock, "models/classifier.pt2", stage="train") == "0123abcd"
    with pytest.raises(ModelLoadError, match="no stage 'train_vae'"):
        locked_output(lock, "models/vae_encoder.pt2", stage="train_vae")
    with pytest.raises(ModelLoadError, match="records no output models/vae_encoder.pt2 in any stage"):
        locked_output(lock, "models/vae_encoder.pt2")


def test_inference_runs_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    loops = record_event_loop_calls(monkeypatch, ClassifierPredictor, "predict")
    assert post(client, encode_image(noise_image(), "PNG")).status_code == 200
    assert loops == [False]


@pytest.mark.parametrize(("change", "message"), [
    ({"classes": ["a", "b", "c", "d"]}, "shape (1, 3) for one image, but its metadata lists 4 classes"),
    ({"image_size": 48}, "fails on one blank 48x48 image"),
    ({"kind": "vae"}, "has unusable metadata"),
    ({"classes": []}, "has unusable metadata"),
])
def test_predictor_refuses_a_model_its_metadata_misdescribes(exported: torch.nn.Module, change: dict,
                                                             message: str) -> None:
    meta = {**classifier_meta().model_dump(mode="json"), **change}
    loaded = LoadedArtifact(CLASSIFIER, exported, meta, "0" * 32)
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        ClassifierPredictor(loaded, max_pixels=1000)


def test_concurrent_requests_get_the_same_answer(client: TestClient) -> None:
    images = [encode_image(noise_image(seed=seed), "PNG") for seed in range(3)]
    alone = [post(client, data, k=3) for data in images]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(lambda i: post(client, images[i % 3], k=3), range(12)))
    # Concurrent requests share a batch: the same answer up to float rounding of the batched call.
    for i, response in enumerate(together):
        assert by_class(response) == pytest.approx(by_class(alone[i % 3]), abs=1e-5)
    assert by_class(alone[0]) != pytest.approx(by_class(alone[1]), abs=1e-4)


def test_metrics_count_requests_rejections_and_latency(client: TestClient) -> None:
    before = (sample("flowerlab_http_requests_total", endpoint="/predict", status="415"),
              sample("flowerlab_rejected_inputs_total", reason="unsupported_format"),
              sample("flowerlab_prediction_seconds_count"))
    assert post(client, b"not an image").status_code == 415
    assert post(client, encode_image(noise_image(), "PNG")).status_code == 200
    after = (sample("flowerlab_http_requests_total", endpoint="/predict", status="415"),
             sample("flowerlab_rejected_inputs_total", reason="unsupported_format"),
             sample("flowerlab_prediction_seconds_count"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    text = client.get("/metrics").text
    assert 'flowerlab_http_requests_total{endpoint="/predict",status="200"}' in text
    assert 'flowerlab_rejected_inputs_total{reason="unsupported_format"}' in text


def test_openapi_documents_every_response(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]["responses"]
    assert set(predict) >= {"200", "413", "415", "422", "503"}
    ok = predict["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/PredictResponse"}
    assert predict["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ValidationErrorResponse"}
    assert "ReadyResponse" in schema["components"]["schemas"]
