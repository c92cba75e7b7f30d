"""The VAE endpoints in-process: /generate, /reconstruct, the VAE part of /ready, and startup refusal."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import REGISTRY
from torchvision.transforms.v2 import functional as F
from torchvision.utils import make_grid

from flowerlab import paths
from flowerlab.export import load_program
from flowerlab.files import file_md5
from flowerlab.imaging import decode_image, square_resize
from serve.app import create_app
from serve.predictor import VaePredictor
from serve.registry import VAE_DECODER, VAE_ENCODER, LoadedArtifact, ModelLoadError, read_vae_metrics
from tests.builders import (
    VAE_IMAGE_SIZE,
    VAE_LATENT_DIM,
    VAE_METRICS,
    copy_root,
    encode_image,
    noise_image,
    png_declaring,
    vae_meta,
    write_lock,
)
from tests.servers import record_event_loop_calls

S = VAE_IMAGE_SIZE
PADDING = 2  # make_grid's default, which /generate keeps
JPEG = encode_image(noise_image(), "JPEG")


@pytest.fixture(scope="module")
def halves(served_root: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The served encoder and decoder, loaded separately to check the service against."""
    encoder, meta = load_program(served_root / paths.VAE_ENCODER)
    decoder, _ = load_program(served_root / paths.VAE_DECODER)
    assert (meta["image_size"], meta["latent_dim"]) == (S, VAE_LATENT_DIM)
    return encoder, decoder


def generate(client: TestClient, **params: object):
    return client.post("/generate", params=params)


def png_pixels(data: bytes) -> torch.Tensor:
    """A PNG's pixels as a uint8 tensor (3, H, W); asserts it is an RGB PNG."""
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.mode) == ("PNG", "RGB")
        return F.pil_to_tensor(image)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def expected_samples(decoder: torch.nn.Module, n: int, seed: int) -> torch.Tensor:
    """The decoder on n prior draws from a generator seeded with ``seed``: float (n, 3, S, S)."""
    z = torch.randn(n, VAE_LATENT_DIM, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return decoder(z)


def grid_side(count: int) -> int:
    return count * (S + PADDING) + PADDING


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_generate_default_is_an_8x8_grid_of_prior_samples(client: TestClient, halves) -> None:
    response = generate(client)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    seed = int(response.headers["x-seed"])
    pixels = png_pixels(response.content)
    assert tuple(pixels.shape) == (3, grid_side(8), grid_side(8)) == (3, 146, 146)
    expected = make_grid(expected_samples(halves[1], 64, seed), nrow=8, padding=PADDING)
    assert torch.equal(pixels, to_uint8(expected))


def test_same_seed_same_bytes_other_seed_other_bytes(client: TestClient) -> None:
    first, again, other = generate(client, seed=7), generate(client, seed=7), generate(client, seed=8)
    assert first.status_code == again.status_code == other.status_code == 200
    assert first.content == again.content
    assert first.content != other.content
    assert (first.headers["x-seed"], other.headers["x-seed"]) == ("7", "8")


def test_random_seed_is_returned_and_reproduces(client: TestClient) -> None:
    global_state = torch.random.get_rng_state()
    first, second = generate(client, n=4), generate(client, n=4)
    assert torch.equal(torch.random.get_rng_state(), global_state)  # a generator of its own
    seeds = int(first.headers["x-seed"]), int(second.headers["x-seed"])
    assert seeds[0] != seeds[1] and first.content != second.content
    assert all(0 <= seed <= 2**53 - 1 for seed in seeds)
    assert generate(client, n=4, seed=seeds[0]).content == first.content


def test_format_json_gives_each_sample_as_a_png_tile_of_the_grid(client: TestClient, halves) -> None:
    response = generate(client, n=5, seed=3, format="json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"seed", "images"} and body["seed"] == 3 and len(body["images"]) == 5
    tiles = [png_pixels(base64.b64decode(image, validate=True)) for image in body["images"]]
    assert all(tuple(tile.shape) == (3, S, S) for tile in tiles)
    assert torch.equal(torch.stack(tiles), to_uint8(expected_samples(halves[1], 5, 3)))
    # The PNG grid of the same request: ceil(sqrt(5)) = 3 per row, so 2 rows of 3 tiles.
    grid = png_pixels(generate(client, n=5, seed=3).content)
    assert tuple(grid.shape) == (3, grid_side(2), grid_side(3))
    for i, tile in enumerate(tiles):
        top, left = PADDING + (i // 3) * (S + PADDING), PADDING + (i % 3) * (S + PADDING)
        assert torch.equal(grid[:, top:top + S, left:left + S], tile)


def test_largest_batch_is_served(client: TestClient) -> None:
    response = generate(client, n=256, seed=1)
    assert response.status_code == 200
    assert tuple(png_pixels(response.content).shape) == (3, grid_side(16), grid_side(16))


@pytest.mark.parametrize(("params", "loc", "message"), [
    ({"n": 0}, "n", "Input should be greater than or equal to 1"),
    ({"n": -3}, "n", "Input should be greater than or equal to 1"),
    ({"n": 257}, "n", "Input should be less than or equal to 256"),
    ({"n": 10000}, "n", "Input should be less than or equal to 256"),
    ({"n": "abc"}, "n", "Input should be a valid integer"),
    ({"n": 2.5}, "n", "Input should be a valid integer"),
    ({"seed": -1}, "seed", "Input should be greater than or equal to 0"),
    ({"seed": "x"}, "seed", "Input should be a valid integer"),
    ({"format": "xml"}, "format", "Input should be 'png' or 'json'"),
], ids=["n=0", "n=-3", "n=257", "n=10000", "n=abc", "n=2.5", "seed=-1", "seed=x", "format=xml"])
def test_bad_generate_parameters_are_422(client: TestClient, params: dict, loc: str, message: str) -> None:
    response = generate(client, **params)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", loc]
    assert error["msg"].startswith(message)


def reconstruct(client: TestClient, data: bytes):
    return client.post("/reconstruct", files={"file": ("upload", data)})


def test_reconstruct_is_decoder_of_encoder_mean(client: TestClient, halves) -> None:
    data = encode_image(noise_image(80, 32, seed=3), "PNG")  # wide: square_resize crops the centre
    response = reconstruct(client, data)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    served = png_pixels(response.content)
    assert tuple(served.shape) == (3, S, S)
    encoder, decoder = halves
    image = square_resize(decode_image(data), S)
    with torch.inference_mode():
        mu, _logvar = encoder(image.unsqueeze(0).float() / 255)
        expected = to_uint8(decoder(mu))[0]
    assert torch.equal(served, expected)
    other = png_pixels(reconstruct(client, encode_image(noise_image(seed=9), "JPEG")).content)
    assert not torch.equal(served, other)


@pytest.mark.parametrize(("data", "status", "message"), [
    (b"just some text, not an image", 415, "not an image in a supported format"),
    (JPEG[: len(JPEG) // 2], 422, "corrupt or truncated image: image file is truncated"),
    (encode_image(noise_image(), "PNG")[:20], 422, "corrupt image header"),
    (b"", 422, "the uploaded file is empty"),
    (png_declaring(20000, 20000), 413, "decompression bomb"),
    (png_declaring(8000, 6000), 413, "48000000 pixels, more than the limit of 40000000"),
], ids=["text", "truncated_jpeg", "png_cut_header", "empty", "pillow_bomb", "over_max_pixels"])
def test_reconstruct_rejects_what_predict_rejects(client: TestClient, data: bytes, status: int,
                                                  message: str) -> None:
    response = reconstruct(client, data)
    assert response.status_code == status
    assert message in response.json()["detail"]
    predicted = client.post("/predict", files={"file": ("upload", data)})
    assert (predicted.status_code, predicted.json()) == (status, response.json())
    assert reconstruct(client, encode_image(noise_image(), "PNG")).status_code == 200


def test_reconstruct_upload_size_limit(served_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWERLAB_ROOT", str(served_root))
    monkeypatch.setenv("FLOWERLAB_MAX_UPLOAD_BYTES", "2000")
    small, large = encode_image(noise_image(8, 8), "PNG"), encode_image(noise_image(), "PNG")
    assert len(small) < 2000 < len(large)
    with TestClient(create_app()) as limited:
        assert reconstruct(limited, small).status_code == 200
        response = reconstruct(limited, large)
        assert (response.status_code, response.json()) == (
            413, {"detail": "uploaded file is larger than the limit of 2000 bytes"})
        response = reconstruct(limited, b"x" * 100_000)
        assert response.status_code == 413
        assert "request body is larger than the limit" in response.json()["detail"]


def test_ready_reports_the_vae_hashes_and_metrics(client: TestClient, served_root: Path) -> None:
    ready = client.get("/ready").json()
    assert ready["vae"]["encoder"] == {"path": "models/vae_encoder.pt2",
                                       "md5": file_md5(served_root / paths.VAE_ENCODER)}
    assert ready["vae"]["decoder"] == {"path": "models/vae_decoder.pt2",
                                       "md5": file_md5(served_root / paths.VAE_DECODER)}
    assert ready["vae"]["encoder"]["md5"] != ready["vae"]["decoder"]["md5"]
    assert (ready["vae"]["latent_dim"], ready["vae"]["image_size"]) == (VAE_LATENT_DIM, S)
    assert ready["vae_metrics"] == VAE_METRICS


def test_vae_metrics_only_when_dvc_lock_vouches_for_them(served_root: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    md5s = [file_md5(served_root / path) for path in (paths.VAE_ENCODER, paths.VAE_DECODER, paths.CLASSIFIER)]
    assert read_vae_metrics(served_root, *md5s) == VAE_METRICS
    assert read_vae_metrics(served_root, md5s[0], "f" * 32, md5s[2]) is None  # another decoder
    assert f"evaluate_vae stage ran on models/vae_decoder.pt2 md5 {md5s[1]}, not {'f' * 32}" in caplog.text
    assert read_vae_metrics(served_root, md5s[0], md5s[1], "e" * 32) is None  # scored by another classifier
    stale = copy_root(served_root, tmp_path / "stale")
    (stale / paths.VAE_METRICS).unlink()
    (stale / paths.VAE_METRICS).write_text(json.dumps({**VAE_METRICS, "mse": 0.5}))
    assert read_vae_metrics(stale, *md5s) is None
    assert "not reporting metrics/vae.json: metrics/vae.json has md5" in caplog.text


def test_ready_vae_metrics_null_without_the_evaluate_vae_stage(served_root: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_root(served_root, tmp_path / "root")
    lock = (root / paths.DVC_LOCK).read_text()
    (root / paths.DVC_LOCK).write_text(lock[: lock.index("  evaluate_vae:")])
    monkeypatch.setenv("FLOWERLAB_ROOT", str(root))
    with TestClient(create_app()) as started:
        ready = started.get("/ready").json()
    assert ready["vae_metrics"] is None
    assert ready["vae"]["decoder"]["md5"] == file_md5(root / paths.VAE_DECODER)


def drop_train_vae(root: Path) -> str:
    lock = (root / paths.DVC_LOCK).read_text()
    (root / paths.DVC_LOCK).write_text(lock[: lock.index("  train_vae:")])
    return "dvc.lock has no stage 'train_vae'"


@pytest.mark.parametrize(("damage", "message"), [
    (lambda root: write_lock(root, decoder_md5="0" * 32),
     "models/vae_decoder.pt2 has md5 {decoder} but dvc.lock records 00000000000000000000000000000000"),
    (lambda root: (root / paths.VAE_ENCODER).unlink(), "models/vae_encoder.pt2 is missing"),
    (drop_train_vae, "dvc.lock has no stage 'train_vae'"),
], ids=["decoder_hash", "no_encoder", "no_train_vae_stage"])
def test_refuses_to_start_when_the_vae_does_not_match_dvc_lock(
        served_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        damage, message: str) -> None:
    root = copy_root(served_root, tmp_path / "root")
    damage(root)
    message = message.format(decoder=file_md5(served_root / paths.VAE_DECODER))
    monkeypatch.setenv("FLOWERLAB_ROOT", str(root))
    with pytest.raises(RuntimeError, match=f"refusing to start: {re.escape(message)}"), \
            TestClient(create_app()):
        pass
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "serve.app"]
    assert len(errors) == 1 and message in errors[0]


@pytest.mark.parametrize(("encoder_change", "decoder_change", "message"), [
    ({}, {"latent_dim": 5}, "the VAE halves disagree on latent_dim: 4 in models/vae_encoder.pt2, 5 in"),
    ({"image_size": 24}, {"image_size": 24}, "the VAE fails on one blank 24x24 image"),
    ({"kind": "vae_decoder"}, {}, "models/vae_encoder.pt2 is a vae_decoder, not a vae_encoder"),
    ({}, {"latent_dim": 0}, "models/vae_decoder.pt2 has unusable metadata"),
])
def test_vae_predictor_refuses_models_their_metadata_misdescribes(halves, encoder_change: dict,
                                                                  decoder_change: dict, message: str) -> None:
    encoder_meta = {**vae_meta("vae_encoder").model_dump(mode="json"), **encoder_change}
    decoder_meta = {**vae_meta("vae_decoder").model_dump(mode="json"), **decoder_change}
    encoder = LoadedArtifact(VAE_ENCODER, halves[0], encoder_meta, "0" * 32)
    decoder = LoadedArtifact(VAE_DECODER, halves[1], decoder_meta, "1" * 32)
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        VaePredictor(encoder, decoder, max_pixels=1000)


def test_vae_inference_runs_off_the_event_loop(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    loops = record_event_loop_calls(monkeypatch, VaePredictor, "decode")
    assert generate(client, n=2).status_code == 200
    assert reconstruct(client, encode_image(noise_image(), "PNG")).status_code == 200
    assert loops == [False, False]


def test_concurrent_generation_is_repeatable(client: TestClient) -> None:
    alone = [generate(client, n=9, seed=seed).content for seed in range(3)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(lambda i: generate(client, n=9, seed=i % 3).content, range(12)))
    assert together == [alone[i % 3] for i in range(12)]


def test_metrics_count_generation_and_reconstruction(client: TestClient) -> None:
    names = [("flowerlab_generated_samples_total", {}), ("flowerlab_generation_seconds_count", {}),
             ("flowerlab_reconstruction_seconds_count", {}),
             ("flowerlab_http_requests_total", {"endpoint": "/generate", "status": "200"}),
             ("flowerlab_http_requests_total", {"endpoint": "/generate", "status": "422"}),
             ("flowerlab_http_requests_total", {"endpoint": "/reconstruct", "status": "415"}),
             ("flowerlab_rejected_inputs_total", {"reason": "invalid_request"})]
    before = [sample(name, **labels) for name, labels in names]
    assert generate(client, n=3).status_code == 200
    assert generate(client, n=5, format="json").status_code == 200
    assert generate(client, n=0).status_code == 422
    assert reconstruct(client, encode_image(noise_image(), "PNG")).status_code == 200
    assert reconstruct(client, b"not an image").status_code == 415
    after = [sample(name, **labels) for name, labels in names]
    assert [b - a for a, b in zip(before, after, strict=True)] == [8, 2, 1, 2, 1, 1, 1]
    assert "flowerlab_generation_seconds_bucket" in client.get("/metrics").text


def test_openapi_documents_the_vae_endpoints(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    generate_doc = schema["paths"]["/generate"]["post"]
    ok = generate_doc["responses"]["200"]
    assert set(ok["content"]) == {"application/json", "image/png"}
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/GenerateResponse"}
    assert "X-Seed" in ok["headers"]
    parameters = {p["name"]: p["schema"] for p in generate_doc["parameters"]}
    assert parameters["n"]["maximum"] == 256 and parameters["n"]["minimum"] == 1
    assert parameters["n"]["default"] == 64
    assert parameters["format"]["enum"] == ["png", "json"]
    reconstruct_doc = schema["paths"]["/reconstruct"]["post"]["responses"]
    assert set(reconstruct_doc) >= {"200", "413", "415", "422", "503"}
    assert set(reconstruct_doc["200"]["content"]) == {"image/png"}
    assert "vae" in schema["components"]["schemas"]["ReadyResponse"]["properties"]


def test_web_page_and_its_assets_are_served_without_external_urls(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element_id in ("file", "predictions", "samples", "new-samples", "error"):
        assert f'id="{element_id}"' in page.text
    assets = {"/static/app.js": "text/javascript", "/static/app.css": "text/css"}
    for path, media_type in assets.items():
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
        assert path in page.text and "://" not in response.text  # no CDN, no external fetch
    assert "://" not in page.text
    assert client.get("/static/missing.js").status_code == 404
    assert sample("flowerlab_http_requests_total", endpoint="/static", status="200") >= 2
