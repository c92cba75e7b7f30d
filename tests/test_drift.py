"""Drift monitoring: the statistics, the reference evaluate records, and the service's scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from flowerlab import paths
from flowerlab.data.synthetic import render_flower
from flowerlab.drift import build_reference, drift_scores, image_statistics, read_reference, write_reference
from flowerlab.export import load_program
from tests.builders import encode_image, write_lock, write_served_root

SIZE = 32  # the builders' classifier size: uploads at this size reach the model unchanged


def flowers(count: int, seed: int) -> np.ndarray:
    """``count`` embedded-set flowers of random classes, uint8 (N, 3, SIZE, SIZE)."""
    rng = np.random.default_rng(seed)
    images = [render_flower(int(rng.integers(102)), rng, SIZE).convert("RGB") for _ in range(count)]
    return np.stack([np.asarray(image) for image in images]).transpose(0, 3, 1, 2)


def test_image_statistics_of_known_images() -> None:
    red = np.zeros((1, 3, 4, 4), np.uint8)
    red[:, 0] = 255
    grey = np.full((1, 3, 4, 4), 128, np.uint8)
    stats = image_statistics(np.concatenate([red, grey]))
    assert stats["red"].tolist() == pytest.approx([1.0, 128 / 255])
    assert stats["green"].tolist() == pytest.approx([0.0, 128 / 255])
    assert stats["brightness"].tolist() == pytest.approx([0.299, 128 / 255], abs=1e-4)
    assert stats["contrast"].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_scores_are_low_for_the_same_distribution_and_high_for_a_shifted_one(tmp_path: Path) -> None:
    reference = build_reference(flowers(300, seed=1), np.full((50, 4), 0.25))
    write_reference(tmp_path / "reference.json", reference)
    loaded = read_reference(tmp_path / "reference.json")
    same = {**image_statistics(flowers(100, seed=2)), "confidence": np.full(100, 0.25)}
    dark = {**image_statistics((flowers(100, seed=2) * 0.4).astype(np.uint8)),
            "confidence": np.full(100, 0.9)}
    assert max(drift_scores(loaded, same).values()) < 0.3
    shifted = drift_scores(loaded, dark)
    assert shifted["brightness"] > 0.5 and shifted["confidence"] > 0.5


def shifted(images: np.ndarray, kind: str) -> np.ndarray:
    if kind == "dark":
        return (images * 0.35).astype(np.uint8)
    if kind == "grey":
        luma = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).astype(np.uint8)
        return np.repeat(luma[:, None], 3, axis=1)
    if kind == "noise":
        return np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    return images


@pytest.fixture(scope="module")
def drift_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builders' served root plus a drift reference, locked as evaluate writes it."""
    root = write_served_root(tmp_path_factory.mktemp("drift") / "root")
    module, _ = load_program(root / paths.CLASSIFIER)
    with torch.inference_mode():
        logits, _ = module(torch.from_numpy(flowers(60, seed=3)).float() / 255)
    reference = build_reference(flowers(300, seed=1), logits.softmax(dim=1).numpy())
    write_reference(root / paths.DRIFT_REFERENCE, reference)
    write_lock(root)
    return root


@pytest.mark.parametrize("kind", ["in-distribution", "dark", "grey", "noise"])
def test_the_service_scores_drift_over_its_window(kind: str, drift_root: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from serve.app import create_app

    for name, value in {"ROOT": drift_root, "DRIFT_WINDOW": 60, "DRIFT_MIN_SAMPLES": 40}.items():
        monkeypatch.setenv(f"FLOWERLAB_{name}", str(value))
    with TestClient(create_app()) as client:
        assert client.get("/monitoring").json()["scores"] == {}  # nothing scored before min_samples
        for image in shifted(flowers(60, seed=4), kind):
            upload = encode_image(Image.fromarray(image.transpose(1, 2, 0)), "PNG")
            assert client.post("/predict", files={"file": ("x.png", upload, "image/png")}).status_code == 200
        report = client.get("/monitoring").json()
        metrics = client.get("/metrics").text
    assert report["enabled"] and report["window"] == 60, report
    assert 'flowerlab_drift_score{statistic="brightness"}' in metrics
    if kind == "in-distribution":
        assert report["drifted"] == [] and max(report["scores"].values()) < report["threshold"], report
    else:
        assert report["drifted"] and max(report["scores"].values()) > report["threshold"], report


def test_monitoring_is_off_without_a_locked_reference(client: TestClient) -> None:
    report = client.get("/monitoring").json()
    assert report["enabled"] is False and "drift_reference.json" in report["disabled_reason"]


@pytest.mark.parametrize(("env", "expected"), [
    ({"FLOWERLAB_DRIFT_MIN_SAMPLES": "300", "FLOWERLAB_DRIFT_WINDOW": "200"},
     "FLOWERLAB_DRIFT_MIN_SAMPLES=300 is more than FLOWERLAB_DRIFT_WINDOW=200: "
     "the monitor would never score"),
    ({"FLOWERLAB_DRIFT_THRESHOLD": "5"}, "FLOWERLAB_DRIFT_THRESHOLD='5': Input should be less than 1"),
])
def test_drift_settings_that_could_never_flag_are_refused(monkeypatch: pytest.MonkeyPatch, env: dict,
                                                          expected: str) -> None:
    from serve.settings import SettingsError, read_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        read_settings()
    assert str(caught.value) == expected
