"""The service and the optimize stage's artifact: served when dvc.lock has it and this CPU runs it,
else the portable classifier.pt2 with one warning; refused, like any locked model, when it differs
from dvc.lock."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from flowerlab import paths
from flowerlab.export import load_program
from flowerlab.files import file_md5
from serve.app import create_app
from serve.predictor import WARMUP_RUNS, ClassifierPredictor, choose_classifier
from serve.registry import CLASSIFIER_SERVED, LoadedArtifact, load_artifacts, load_optimized
from tests.builders import (
    CLASSES,
    copy_root,
    encode_image,
    noise_image,
    rewrite_served_meta,
    served_meta,
    write_lock,
)

UPLOAD = encode_image(noise_image(), "PNG")


def start(root: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("FLOWERLAB_ROOT", str(root))
    return TestClient(create_app())


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("serve")]


def probabilities(client: TestClient) -> list[float]:
    response = client.post("/predict", params={"k": len(CLASSES)}, files={"file": ("f.png", UPLOAD)})
    assert response.status_code == 200, response.text
    by_id = {p["class_id"]: p["probability"] for p in response.json()["predictions"]}
    return [by_id[i] for i in range(len(CLASSES))]


def test_serves_the_optimized_artifact_when_locked(client: TestClient, served_root: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    served = client.get("/ready").json()["served"]
    assert served == {"path": paths.CLASSIFIER_SERVED, "md5": file_md5(served_root / paths.CLASSIFIER_SERVED),
                      "artifact": "int8", "fallback_reason": None}
    optimized = probabilities(client)
    older = copy_root(served_root, tmp_path / "older")  # the same models, an older lock
    write_lock(older, optimize=False)
    with start(older, monkeypatch) as portable:
        exported = probabilities(portable)
    # int8 answers close to fp32, but not bit-identically: the file really is the int8 one
    assert optimized == pytest.approx(exported, abs=0.05) and optimized != exported


def test_falls_back_with_one_warning_when_the_cpu_lacks_a_required_flag(
        served_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_root(served_root, tmp_path / "root")
    rewrite_served_meta(root, requires_cpu_flags=["avx2", "not_a_real_flag"])
    write_lock(root)
    with caplog.at_level(logging.INFO), start(root, monkeypatch) as client:
        served = client.get("/ready").json()["served"]
        assert probabilities(client) == pytest.approx(exported_probabilities(root), abs=1e-6)
    assert served["path"] == paths.CLASSIFIER and served["artifact"] == "exported"
    assert served["md5"] == file_md5(root / paths.CLASSIFIER)
    assert "this CPU lacks not_a_real_flag" in served["fallback_reason"]
    warnings = warnings_from(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"serving {paths.CLASSIFIER} instead of {paths.CLASSIFIER_SERVED}: this "
                                  "CPU lacks not_a_real_flag, which the int8 models/classifier_served.pt "
                                  "requires")


def exported_probabilities(root: Path) -> list[float]:
    from flowerlab.imaging import decode_image, square_resize

    module, meta = load_program(root / paths.CLASSIFIER)
    image = square_resize(decode_image(UPLOAD), meta["image_size"])
    with torch.inference_mode():
        return module(image.unsqueeze(0).float() / 255)[0].softmax(dim=1)[0].tolist()


def test_an_unloadable_served_file_falls_back_with_a_warning(
        served_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_root(served_root, tmp_path / "root")
    (root / paths.CLASSIFIER_SERVED).unlink()
    (root / paths.CLASSIFIER_SERVED).write_bytes(b"not a TorchScript archive")
    write_lock(root)  # locked as it is: dvc.lock vouches for it, but it cannot run
    with start(root, monkeypatch) as client:
        served = client.get("/ready").json()["served"]
    assert (served["path"], served["artifact"]) == (paths.CLASSIFIER, "exported")
    warnings = warnings_from(caplog)
    assert len(warnings) == 1 and f"cannot load {paths.CLASSIFIER_SERVED}" in warnings[0], warnings


def test_a_served_file_that_fails_its_dry_run_falls_back(served_root: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    root = copy_root(served_root, tmp_path / "root")
    rewrite_served_meta(root, classes=["a", "b", "c", "d"])  # the outputs no longer fit its class list
    write_lock(root)
    loaded, reason = load_optimized(root)
    assert loaded is not None and reason is None  # it loads; only running it shows the problem
    predictor, reason = choose_classifier(root, load_artifacts(root)["classifier"], 10**6, 4)
    assert predictor.artifact == "exported" and predictor.loaded.artifact.path == paths.CLASSIFIER
    assert "metadata lists 4 classes" in reason
    warnings = warnings_from(caplog)
    assert len(warnings) == 1 and "metadata lists 4 classes" in warnings[0], warnings


def test_refuses_to_start_when_the_served_file_differs_from_dvc_lock(
        served_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_root(served_root, tmp_path / "root")
    write_lock(root, served_md5="0" * 32)
    with pytest.raises(RuntimeError, match=f"refusing to start: {paths.CLASSIFIER_SERVED} has md5 "), \
            start(root, monkeypatch):
        pass
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "serve.app"]
    assert len(errors) == 1 and "but dvc.lock records 00000000000000000000000000000000" in errors[0]
    write_lock(root)
    (root / paths.CLASSIFIER_SERVED).unlink()
    with pytest.raises(RuntimeError, match=f"{paths.CLASSIFIER_SERVED} is missing"), start(root, monkeypatch):
        pass


def test_an_older_lock_without_the_optimize_stage_serves_classifier_pt2(
        served_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_root(served_root, tmp_path / "root")
    write_lock(root, optimize=False)
    with caplog.at_level(logging.INFO), start(root, monkeypatch) as client:
        served = client.get("/ready").json()["served"]
    assert served == {"path": paths.CLASSIFIER, "md5": file_md5(root / paths.CLASSIFIER),
                      "artifact": "exported", "fallback_reason": None}
    assert not warnings_from(caplog)
    assert any(r.levelno == logging.INFO and "dvc.lock has no optimize stage (an older lock): serving "
               f"{paths.CLASSIFIER}" in r.getMessage() for r in caplog.records)


def test_warm_up_runs_the_largest_batch_before_ready(served_root: Path) -> None:
    loaded, _ = load_optimized(served_root)
    batches: list[int] = []

    def recording(images: torch.Tensor):
        batches.append(len(images))
        return loaded.module(images)

    assert served_meta().artifact == loaded.meta["artifact"]
    ClassifierPredictor(LoadedArtifact(CLASSIFIER_SERVED, recording, loaded.meta, loaded.md5),
                        max_pixels=10**6, warmup_batch=16)
    assert batches == [1] + [16] * WARMUP_RUNS
