"""The Lightning module: smoke run, a learning test, the schedule, and simulated DDP on CPU."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from flowerlab.classifier.module import FlowerClassifier, param_groups, warmup_cosine
from flowerlab.classifier.network import ImageClassifier


def tiny_loader(n: int = 16, classes: int = 4, size: int = 32, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    # Each class is a distinct flat colour plus noise: learnable within a few steps.
    images = (labels.view(-1, 1, 1, 1).float() / classes).expand(n, 3, size, size).clone()
    images += 0.05 * torch.rand(n, 3, size, size, generator=generator)
    return DataLoader(TensorDataset(images.clamp(0, 1), labels), batch_size=8)


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_no_weight_decay_on_norms_and_biases() -> None:
    model = FlowerClassifier(ImageClassifier(3), 3, lr=1e-3)
    decay, no_decay = param_groups(model.net, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    n_params = sum(1 for p in model.net.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n_params


def test_warmup_then_cosine() -> None:
    factor = warmup_cosine(total_steps=100, warmup_steps=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5) and factor(100) == pytest.approx(0.0)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 100))


@pytest.mark.slow
def test_fast_dev_run_logs_metrics() -> None:
    L.seed_everything(0)
    model = FlowerClassifier(ImageClassifier(4), 4, lr=1e-3)
    run = trainer(fast_dev_run=True)
    run.fit(model, tiny_loader(), tiny_loader())
    assert {"train/loss", "val/loss", "val/acc", "val/acc_best"} <= set(run.callback_metrics)


@pytest.mark.slow
def test_overfitting_a_batch_lowers_the_loss() -> None:
    L.seed_everything(0)
    model = FlowerClassifier(ImageClassifier(4), 4, lr=2e-3, label_smoothing=0.0, warmup_epochs=0)
    loader = tiny_loader()
    images, labels = next(iter(loader))
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(model.eval()(images), labels).item()
    trainer(max_epochs=15, overfit_batches=1, num_sanity_val_steps=0,
            limit_val_batches=0).fit(model, loader)
    model.eval()
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(model(images), labels).item()
    assert after < before * 0.5, (before, after)


@pytest.mark.slow
def test_simulated_ddp_on_two_cpu_processes() -> None:
    L.seed_everything(0)
    model = FlowerClassifier(ImageClassifier(4), 4, lr=1e-3)
    run = trainer(max_epochs=1, devices=2, strategy="ddp_spawn", limit_train_batches=2,
                  limit_val_batches=1, num_sanity_val_steps=0)
    run.fit(model, tiny_loader(), tiny_loader())
    assert run.world_size == 2 and run.state.finished


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["simple", "advanced"])
def test_train_profiler_writes_its_report_to_profiles(kind: str, tmp_path, monkeypatch) -> None:
    from flowerlab.config import TrainParams
    from flowerlab.trainer import make_trainer

    monkeypatch.chdir(tmp_path)
    L.seed_everything(0)
    settings = TrainParams(accelerator="cpu", profiler=kind)
    run = make_trainer(settings, max_epochs=1, log_dir=str(tmp_path / "live"), callbacks=[], name="train")
    run.fit(FlowerClassifier(ImageClassifier(4), 4, lr=1e-3), tiny_loader(), tiny_loader())
    report = tmp_path / "profiles" / "fit-train.txt"
    assert report.is_file(), sorted(p.name for p in tmp_path.rglob("*"))
    text = report.read_text()
    assert "training_step" in text or "run_training_epoch" in text, text[:500]


@pytest.mark.slow
def test_auto_precision_is_resolved_and_recorded(tmp_path, monkeypatch) -> None:
    import yaml

    from flowerlab.config import TrainParams
    from flowerlab.hardware import choose_precision
    from flowerlab.trainer import make_trainer

    monkeypatch.chdir(tmp_path)
    L.seed_everything(0)
    expected, reason = choose_precision("auto", "cpu")
    run = make_trainer(TrainParams(accelerator="cpu", precision="auto"), max_epochs=1,
                       log_dir=str(tmp_path / "live"), callbacks=[], name="train")
    assert run.precision == expected
    run.fit(FlowerClassifier(ImageClassifier(4), 4, lr=1e-3), tiny_loader(), tiny_loader())
    logged = yaml.safe_load((tmp_path / "live" / "params.yaml").read_text())
    assert logged["precision"] == expected and logged["precision_reason"] == reason
