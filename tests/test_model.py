"""The classifier network, pretrained weights loading, export and evaluation metrics."""

from __future__ import annotations

import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from flowerlab.classifier.evaluation import classification_metrics, per_class_accuracy
from flowerlab.classifier.network import ExportedClassifier, ImageClassifier
from flowerlab.errors import WeightsError
from flowerlab.export import ClassifierMeta, export_program, load_model, load_program
from flowerlab.files import file_md5
from flowerlab.inference import predict_batches


def test_shapes_dtypes_and_features() -> None:
    torch.manual_seed(0)
    model = ImageClassifier(7).eval()
    images = torch.rand(3, 3, 32, 32)
    logits = model(images)
    assert logits.shape == (3, 7) and logits.dtype == torch.float32
    assert model.features(images).shape == (3, 512)
    exported_logits, features = ExportedClassifier(model)(images)
    torch.testing.assert_close(exported_logits, logits)
    assert features.shape == (3, 512)


def test_normalisation_is_built_in() -> None:
    model = ImageClassifier(2).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    # A mean-coloured image normalises to zeros, exactly what the backbone sees for zeros.
    torch.testing.assert_close(model.features(mean), model.backbone(torch.zeros(1, 3, 32, 32)))


def test_local_weights_file_is_loaded(tmp_path) -> None:
    torch.manual_seed(1)
    reference = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = ImageClassifier(5, pretrained=True, weights_path=str(path))
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.head.out_features == 5


def test_torchvision_weights_from_its_cache(tmp_path, monkeypatch) -> None:
    """pretrained without weights_path goes through torchvision's weights (here: its cache)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(2)
    reference = resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    model = ImageClassifier(3, pretrained=True)
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)


def test_no_network_and_no_weights_gives_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match="weights_path"):
        ImageClassifier(3, pretrained=True)


def test_bad_weights_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(WeightsError, match="file not found"):
        ImageClassifier(3, pretrained=True, weights_path=str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        ImageClassifier(3, pretrained=True, weights_path=str(garbage))
    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(2)}, other)
    with pytest.raises(WeightsError, match="not a ResNet18 state dict"):
        ImageClassifier(3, pretrained=True, weights_path=str(other))


def test_export_round_trip_with_dynamic_batch(tmp_path) -> None:
    torch.manual_seed(3)
    model = ImageClassifier(4).eval()
    path = tmp_path / "model.pt2"
    meta = ClassifierMeta(architecture="resnet18", classes=["a", "b", "c", "d"], image_size=32,
                          source="test", normalisation={"built_in": True})
    export_program(ExportedClassifier(model), torch.rand(2, 3, 32, 32), path, meta)
    module, loaded_meta = load_model(path, ClassifierMeta)
    assert loaded_meta == meta
    assert load_program(path)[1] == meta.model_dump(mode="json", exclude_none=True)  # the raw JSON
    for batch in (1, 5):
        images = torch.rand(batch, 3, 32, 32)
        logits, _ = module(images)
        torch.testing.assert_close(logits, model(images), rtol=1e-4, atol=1e-5)
    assert len(file_md5(path)) == 32
    # No absolute source paths inside: the same commit exports the same bytes in any checkout.
    repo = str(Path(__file__).resolve().parents[1]).encode()
    with zipfile.ZipFile(path) as archive:
        assert not any(repo in archive.read(name) for name in archive.namelist())
    uint8 = (torch.rand(6, 3, 32, 32) * 255).to(torch.uint8)
    batched, features = predict_batches(module, uint8, batch_size=4)
    torch.testing.assert_close(batched, model(uint8.float() / 255), rtol=1e-4, atol=1e-5)
    assert features.shape == (6, 512)


def test_classification_metrics_on_known_logits() -> None:
    labels = torch.tensor([0, 1, 2, 2])
    perfect = torch.nn.functional.one_hot(labels, 6).float() * 20
    metrics = classification_metrics(perfect, labels)
    assert metrics["accuracy"] == metrics["top5_accuracy"] == metrics["macro_f1"] == 1.0
    assert metrics["loss"] < 1e-6 and metrics["ece"] < 1e-6 and metrics["samples"] == 4

    wrong = torch.nn.functional.one_hot(torch.tensor([1, 1, 2, 0]), 6).float() * 20
    metrics = classification_metrics(wrong, labels)
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["ece"] == pytest.approx(0.5, abs=1e-4)  # confident and half wrong
    classes = ["a", "b", "c", "d", "e", "f"]
    assert per_class_accuracy(wrong, labels, classes)[:4] == [
        {"class": "a", "accuracy": 0.0, "test_images": 1}, {"class": "b", "accuracy": 1.0, "test_images": 1},
        {"class": "c", "accuracy": 0.5, "test_images": 2},
        {"class": "d", "accuracy": None, "test_images": 0}]  # no test image: no accuracy, not 0
