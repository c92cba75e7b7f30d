"""The optimize stage's parts: candidates (int8 keeps a trained model's answers), the served file's
round trip, and the rule that picks the served artifact, on fake measurements."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest
import torch

from flowerlab.classifier.network import ExportedClassifier, ImageClassifier
from flowerlab.classifier.optimize import (
    Bfloat16Classifier,
    Measurement,
    accuracy,
    build_candidates,
    calibration_indices,
    choose_artifact,
    frozen_script,
    int8_classifier,
    optimize_report,
)
from flowerlab.config import ConfigError, load_params
from flowerlab.export import ServedClassifierMeta, load_scripted, read_scripted_meta, save_scripted
from tests.builders import served_meta
from tests.datasets import REPO, write_params

SIZE, CLASSES = 16, 3


def colour_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (count, 3, 16, 16) whose class is the brightest channel: easy to learn."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % CLASSES
    images = torch.rand(count, 3, SIZE, SIZE, generator=generator) * 0.5
    images[torch.arange(count), labels] += 0.5
    return (images * 255).to(torch.uint8), labels


@pytest.fixture(scope="module")
def trained() -> ImageClassifier:
    """A 3-class ResNet18 at 16 px trained briefly on colour images, in eval mode."""
    torch.manual_seed(0)
    net = ImageClassifier(CLASSES)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    images, labels = colour_images(192, seed=1)
    net.train()
    for step in range(24):
        batch = slice((step * 32) % 192, (step * 32) % 192 + 32)
        loss = torch.nn.functional.cross_entropy(net(images[batch].float() / 255), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.mark.slow
def test_int8_keeps_the_accuracy_and_answers_of_fp32(trained: ImageClassifier) -> None:
    images, labels = colour_images(96, seed=2)
    fp32 = ExportedClassifier(trained).eval()
    calibration = list((colour_images(64, seed=3)[0].float() / 255).split(32))
    int8 = frozen_script(int8_classifier(trained, calibration), calibration[0][:2])
    fp32_accuracy, int8_accuracy = accuracy(fp32, images, labels), accuracy(int8, images, labels)
    assert fp32_accuracy >= 0.9  # the model learnt the task, so agreement below means something
    assert int8_accuracy >= fp32_accuracy - 0.05
    with torch.inference_mode():
        batch = images.float() / 255
        agree = (fp32(batch)[0].argmax(1) == int8(batch)[0].argmax(1)).float().mean().item()
        logits, features = int8(batch[:5])
    assert agree >= 0.95, agree
    assert (logits.dtype, features.dtype, tuple(logits.shape), tuple(features.shape)) == (
        torch.float32, torch.float32, (5, CLASSES), (5, 512))


def test_bf16_candidate_takes_and_returns_float32(trained: ImageClassifier) -> None:
    images = colour_images(8, seed=4)[0].float() / 255
    bf16 = frozen_script(Bfloat16Classifier(trained), images[:2])
    with torch.inference_mode():
        logits, features = bf16(images)
        reference, _ = ExportedClassifier(trained)(images)
    assert logits.dtype == features.dtype == torch.float32
    assert (logits.argmax(1) == reference.argmax(1)).all()
    assert torch.allclose(logits, reference, atol=0.1 * reference.abs().max().item())


def test_candidates_follow_the_cpu_flags(trained: ImageClassifier) -> None:
    calibration = [colour_images(8, seed=5)[0].float() / 255]
    exported = ExportedClassifier(trained)
    plain, skipped = build_candidates(exported, trained, calibration, set())
    assert set(plain) == {"fp32"} and set(skipped) == {"int8", "bf16"}
    assert "avx2" in skipped["int8"] and "emulated" in skipped["bf16"]
    full, skipped = build_candidates(exported, trained, calibration, {"avx2", "avx512_bf16", "fma"})
    assert set(full) == {"fp32", "int8", "bf16"} and not skipped
    assert {name: c.requires_cpu_flags for name, c in full.items()} == {
        "fp32": [], "int8": ["avx2"], "bf16": ["avx512_bf16"]}
    assert full["fp32"].module is exported  # fp32 is measured as the exported program itself
    with torch.inference_mode():  # ... and served as its trace, which gives the same answers
        traced, _ = full["fp32"].script()(calibration[0])
        assert torch.allclose(traced, exported(calibration[0])[0], atol=1e-4)


def test_served_file_round_trips_with_its_metadata(trained: ImageClassifier, tmp_path: Path) -> None:
    images = colour_images(5, seed=6)[0].float() / 255
    script = frozen_script(ExportedClassifier(trained), images[:2])
    path = tmp_path / "classifier_served.pt"
    meta = served_meta(artifact="fp32", requires_cpu_flags=[], image_size=SIZE)
    save_scripted(script, path, meta)
    expected = meta.model_dump(mode="json")
    assert ServedClassifierMeta.model_validate(read_scripted_meta(path)).model_dump(mode="json") == expected
    loaded, raw = load_scripted(path)
    assert ServedClassifierMeta.model_validate(raw).model_dump(mode="json") == expected
    with torch.inference_mode():
        for batch in (images[:1], images):  # the batch dimension stays dynamic
            assert torch.equal(loaded(batch)[0], script(batch)[0])
    # No paths of this checkout or its environment (the trace's stack) inside: the same commit
    # saves the same bytes in any checkout, so dvc.lock reproduces.
    places = [str(Path(__file__).resolve().parents[1]).encode(), sys.prefix.encode()]
    with zipfile.ZipFile(path) as archive:
        assert not [name for name in archive.namelist()
                    if any(place in archive.read(name) for place in places)]
        assert f"{path.stem}/extra/meta.json" in archive.namelist()
    again = tmp_path / "again" / path.name
    save_scripted(script, again, meta)
    assert again.read_bytes() == path.read_bytes()


def test_the_network_inside_an_exported_program_has_its_weights(trained: ImageClassifier,
                                                                 tmp_path: Path) -> None:
    """optimize quantizes the network the program holds, not a checkpoint: train may have exported
    the last epoch's weights or the best one's."""
    from flowerlab.classifier.network import network_of
    from flowerlab.export import ClassifierMeta, export_program, load_model

    images = colour_images(4, seed=7)[0].float() / 255
    meta = ClassifierMeta(architecture="resnet18", classes=["a", "b", "c"], image_size=SIZE, source="test",
                          normalisation={"built_in": True})
    export_program(ExportedClassifier(trained), images[:2], tmp_path / "classifier.pt2", meta)
    program, _ = load_model(tmp_path / "classifier.pt2", ClassifierMeta)
    net = network_of(program, CLASSES)
    for (name, a), b in zip(trained.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.allclose(net(images), program(images)[0], atol=1e-5)
    with pytest.raises(RuntimeError, match="size mismatch"):
        network_of(program, CLASSES + 1)


def fake(accuracy: float, b1: float, b16: float) -> Measurement:
    return Measurement(accuracy, {1: b1, 16: b16})


def test_choice_is_the_fastest_at_batch_16_within_the_accuracy_drop() -> None:
    measured = {"fp32": fake(0.86, 100, 400), "int8": fake(0.858, 150, 1000), "bf16": fake(0.86, 300, 600)}
    chosen, reason = choose_artifact(measured, 0.005)
    assert chosen == "int8"  # bf16 is faster at batch 1, but the rule looks at batch 16
    assert reason.startswith("int8: fastest at batch 16 (2.50x fp32) with val accuracy 0.8580")
    report = optimize_report(measured, chosen, reason, {})
    assert report["chosen"] == "int8" and report["chosen_speedup"] == 2.5
    assert report["chosen_speedup_batch1"] == 1.5 and report["chosen_accuracy_drop"] == pytest.approx(0.002)
    assert report["candidates"]["bf16"] == {"val_accuracy": 0.86, "images_per_s_batch1": 300,
                                            "images_per_s_batch16": 600, "speedup_batch1": 3.0,
                                            "speedup_batch16": 1.5}


def test_a_candidate_over_the_drop_is_passed_over_with_the_reason() -> None:
    measured = {"fp32": fake(0.86, 100, 400), "int8": fake(0.85, 150, 1000)}
    chosen, reason = choose_artifact(measured, 0.005)
    assert chosen == "fp32"
    assert "int8 (2.50x) loses 0.0100 val accuracy, over 0.005" in reason
    measured["bf16"] = fake(0.857, 100, 500)
    chosen, reason = choose_artifact(measured, 0.005)
    assert chosen == "bf16" and "int8 (2.50x) loses 0.0100" in reason


def test_fp32_qualifies_even_when_it_is_slowest_and_the_drop_is_zero() -> None:
    measured = {"fp32": fake(0.5, 100, 100), "int8": fake(0.5, 90, 99), "bf16": fake(0.499, 500, 500)}
    assert choose_artifact(measured, 0.0)[0] == "fp32"
    assert choose_artifact(measured, 0.001)[0] == "bf16"


def test_calibration_indices_spread_over_the_training_split() -> None:
    train = list(range(0, 1000, 2))  # 500 indices, in class order as the split writes them
    picked = calibration_indices(train, 50)
    assert len(picked) == 50 and picked[0] == 0 and picked[-1] >= 960 and len(set(picked)) == 50
    assert calibration_indices(train[:10], 50) == train[:10]


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_max_accuracy_drop_is_validated(tmp_path: Path, value: float) -> None:
    path = write_params(tmp_path, {"optimize.max_accuracy_drop": value})
    with pytest.raises(ConfigError, match="optimize.max_accuracy_drop"):
        load_params(path)
    assert load_params(REPO / "params.yaml").optimize.max_accuracy_drop == 0.005
