"""Hostile and odd uploads (tests/hostile.py) on /predict and /reconstruct: each gets its documented
status, never a 5xx, and the service answers a normal request right after. In-process for every kind
and endpoint, then the whole corpus once against a real uvicorn process."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from serve.settings import ServeSettings
from tests.builders import encode_image, noise_image
from tests.hostile import Upload, corpus

ENDPOINTS = ["/predict", "/reconstruct"]
MAX_UPLOAD_BYTES = ServeSettings.model_fields["max_upload_bytes"].default  # the fixtures' setting
CORPUS = corpus(MAX_UPLOAD_BYTES)
NORMAL = encode_image(noise_image(), "JPEG")


def check(response: httpx.Response, upload: Upload, endpoint: str) -> None:
    where = f"{upload.kind} on {endpoint}"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
    assert response.status_code == upload.status, f"{where}: {response.status_code} {response.text[:300]}"
    if upload.status == 200:
        expected = "application/json" if endpoint == "/predict" else "image/png"
        assert response.headers["content-type"] == expected, where
    else:
        assert upload.detail in response.json()["detail"], f"{where}: {response.json()}"


def test_the_corpus_covers_the_kinds_it_promises() -> None:
    kinds = {upload.kind for upload in CORPUS}
    assert len(kinds) == len(CORPUS) >= 15
    assert {upload.status for upload in CORPUS} == {200, 413, 415, 422}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("upload", CORPUS, ids=[upload.kind for upload in CORPUS])
def test_hostile_upload_gets_its_status_and_the_service_keeps_serving(client: TestClient, upload: Upload,
                                                                      endpoint: str) -> None:
    check(client.post(endpoint, files={"file": (upload.filename, upload.data)}), upload, endpoint)
    assert client.post(endpoint, files={"file": ("normal.jpg", NORMAL)}).status_code == 200


@pytest.mark.slow
def test_hostile_corpus_against_uvicorn(server: tuple[str, httpx.Response]) -> None:
    url, _ready = server
    with httpx.Client(base_url=url, timeout=60) as http:
        for upload in CORPUS:
            for endpoint in ENDPOINTS:
                check(http.post(endpoint, files={"file": (upload.filename, upload.data)}), upload, endpoint)
        for endpoint in ENDPOINTS:
            assert http.post(endpoint, files={"file": ("normal.jpg", NORMAL)}).status_code == 200
        assert http.get("/health").json() == {"status": "ok"}
