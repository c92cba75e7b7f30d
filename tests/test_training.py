"""The Lightning module: smoke run, a learning test, the schedule, and simulated DDP on CPU."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from flowerlab.classifier.module import FlowerClassifier, FreezeBackbone, param_groups, warmup_cosine
from flowerlab.classifier.network import ImageClassifier
from flowerlab.data.transforms import progressive_size


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


def test_the_backbone_learns_at_its_own_lr_and_the_head_at_lr() -> None:
    model = FlowerClassifier(ImageClassifier(3), 3, lr=1e-2, backbone_lr_scale=0.1, warmup_epochs=0)
    run = trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    run.fit(model, tiny_loader(classes=3))
    lr_of = {id(p): group["initial_lr"] for group in run.optimizers[0].param_groups
             for p in group["params"]}
    assert len(lr_of) == sum(1 for _ in model.net.parameters())
    assert [lr_of[id(p)] for p in model.net.backbone.parameters()] == pytest.approx([1e-3] * 60)
    assert [lr_of[id(p)] for p in model.net.head.parameters()] == pytest.approx([1e-2] * 2)


@pytest.mark.slow
def test_a_frozen_backbone_stays_put_for_its_epochs_then_trains() -> None:
    L.seed_everything(0)
    model = FlowerClassifier(ImageClassifier(4), 4, lr=1e-2, backbone_lr_scale=0.1, warmup_epochs=0)

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.net.state_dict().items()}

    seen = [snapshot()]

    class AfterEachEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            seen.append(snapshot())

    trainer(max_epochs=2, limit_val_batches=0, callbacks=[FreezeBackbone(1), AfterEachEpoch()]).fit(
        model, tiny_loader())
    start, frozen, trained = seen

    def moved(before, after, prefix: str) -> bool:
        return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))

    assert not moved(start, frozen, "backbone."), "the backbone (weights or BN stats) moved while frozen"
    assert moved(start, frozen, "head.")
    assert moved(frozen, trained, "backbone.conv1") and moved(frozen, trained, "backbone.bn1.running_mean")
    assert all(p.requires_grad for p in model.net.parameters())


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


def test_training_takes_cutmix_mixup_batches_with_probability_labels() -> None:
    from flowerlab.data.transforms import BatchMix

    L.seed_everything(0)
    model = FlowerClassifier(ImageClassifier(4), 4, lr=1e-3)
    plain = tiny_loader()
    mixed = DataLoader(plain.dataset, batch_size=8, collate_fn=BatchMix(num_classes=4, p=1.0))
    assert next(iter(mixed))[1].shape == (8, 4)
    run = trainer(fast_dev_run=True)
    run.fit(model, mixed, plain)
    assert torch.isfinite(run.callback_metrics["train/loss"])


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


class Crash(Exception):
    pass


class CrashAtEpoch(L.Callback):
    """Raises :class:`Crash` as epoch ``epoch`` starts (``None``: never), as a killed run stops."""

    def __init__(self, epoch: int | None):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise Crash


@pytest.mark.slow
def test_resuming_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch) -> None:
    from flowerlab.config import TrainParams
    from flowerlab.trainer import LAST, checkpoints, make_trainer, resume_from

    monkeypatch.chdir(tmp_path)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(24, 3, 32, 32, generator=generator), torch.arange(24) % 4

    class Flip(TensorDataset):  # a random augmentation from the global RNG, as the stage's
        def __getitem__(self, index):
            image, label = super().__getitem__(index)
            return (image.flip(-1) if torch.rand(()) < 0.5 else image), label

    def fit(folder: str, resume: bool, crash_at: int | None = None) -> FlowerClassifier:
        L.seed_everything(0)
        model = FlowerClassifier(ImageClassifier(4), 4, lr=1e-3)
        best, last = checkpoints(folder, "val/acc", "max")
        start = resume_from(folder, resume, 3)
        run = make_trainer(TrainParams(accelerator="cpu", precision="32-true"), 3, f"live-{folder}",
                           [best, last, CrashAtEpoch(crash_at)], name="train")
        run.fit(model, DataLoader(Flip(images, labels), batch_size=8, shuffle=True),
                DataLoader(TensorDataset(images, labels), batch_size=8), ckpt_path=start)
        return model

    straight = fit("straight", resume=False)
    with pytest.raises(Crash):
        fit("crashed", resume=False, crash_at=2)
    assert (tmp_path / "crashed" / LAST).is_file() and not list((tmp_path / "crashed").glob(".*partial"))
    resumed = fit("crashed", resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resuming_in_another_memory_layout_steps_as_resuming_in_the_same(tmp_path, monkeypatch) -> None:
    # Fused AdamW on CPU steps raw memory: state saved from contiguous weights and restored into
    # channels_last ones (train.channels_last changed, or auto chose otherwise on another machine)
    # must be given the new layout, or each weight is updated with another weight's moments.
    from flowerlab.config import TrainParams
    from flowerlab.trainer import checkpoints, make_trainer, resume_from

    monkeypatch.chdir(tmp_path)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(24, 3, 32, 32, generator=generator), torch.arange(24) % 4

    def fit(folder: str, channels_last: bool, epochs: int, resume: bool) -> FlowerClassifier:
        L.seed_everything(0)
        model = FlowerClassifier(ImageClassifier(4), 4, lr=1e-2, channels_last=channels_last)
        best, last = checkpoints(folder, "val/acc", "max")
        start = resume_from(folder, resume, epochs)
        run = make_trainer(TrainParams(accelerator="cpu", precision="32-true"), epochs, f"live-{folder}",
                           [best, last], name="train")
        run.fit(model, DataLoader(TensorDataset(images, labels), batch_size=8),
                DataLoader(TensorDataset(images, labels), batch_size=8), ckpt_path=start)
        return model

    for folder in ("same", "other"):
        fit(folder, channels_last=False, epochs=1, resume=False)
    same = fit("same", channels_last=False, epochs=3, resume=True)
    other = fit("other", channels_last=True, epochs=3, resume=True)
    optimizer = other.trainer.optimizers[0]
    for param in (p for group in optimizer.param_groups for p in group["params"]):
        for value in optimizer.state[param].values():
            if value.shape == param.shape:
                assert value.stride() == param.stride()
    assert other.net.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # The layouts run different kernels, so rounding differs: up to about 1e-4 in a batch norm's
    # running mean on an AVX2-only EPYC. Wrong moments put conv1's weights off by about 1e-2.
    for (name, a), b in zip(same.state_dict().items(), other.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3), name


def test_a_checkpoint_write_that_dies_midway_leaves_the_previous_one_whole(tmp_path, monkeypatch) -> None:
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from flowerlab.trainer import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)

    def dies_midway(self, checkpoint, target, storage_options=None) -> None:
        with open(target, "wb") as partial:
            partial.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("killed")

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", dies_midway)
    with pytest.raises(OSError, match="killed"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}


def test_checkpoint_state_names_its_files_and_restores_them_in_another_folder(tmp_path) -> None:
    """The same run saves the same bytes in any checkout, and resumes with its best-model record
    in another place (a queued experiment's temporary workspace)."""
    import warnings

    from flowerlab.trainer import checkpoints

    best, _ = checkpoints(str(tmp_path / "here" / "ckpt"), "val/acc", "max")
    best.best_model_path = best.kth_best_model_path = str(tmp_path / "here" / "ckpt" / "best.ckpt")
    best.best_model_score = best.kth_value = torch.tensor(0.75)
    best.best_k_models = {best.best_model_path: torch.tensor(0.75)}
    state = best.state_dict()
    assert str(tmp_path) not in repr(state)
    assert state["best_model_path"] == "best.ckpt" and state["last_model_path"] == ""

    moved, _ = checkpoints(str(tmp_path / "there" / "ckpt"), "val/acc", "max")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning warns when it drops the record
        moved.load_state_dict(state)
    there = str(tmp_path / "there" / "ckpt" / "best.ckpt")
    assert (moved.best_model_path, moved.kth_best_model_path, moved.dirpath) == (
        there, there, str(tmp_path / "there" / "ckpt"))
    assert moved.best_k_models == {there: torch.tensor(0.75)} and float(moved.best_model_score) == 0.75
    assert moved.last_model_path == ""


def test_resume_refuses_a_checkpoint_past_the_epochs_asked_for(tmp_path) -> None:
    """The finished 8-epoch run's checkpoint with epochs=3: one clear line, not Lightning's
    traceback; up to its epochs it resumes, and without resume the folder is cleared."""
    from flowerlab.errors import StageError
    from flowerlab.trainer import LAST, resume_from

    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"epoch": 7, "state_dict": {}}, folder / LAST)  # Lightning's epoch: 0-based, the last one done
    with pytest.raises(StageError, match=r"has trained 8 epochs, more than epochs=3: set epochs above 8"):
        resume_from(str(folder), True, 3)
    assert resume_from(str(folder), True, 8) == resume_from(str(folder), True, 12) == str(folder / LAST)
    assert resume_from(str(folder), False, 12) is None and not folder.exists()


def test_a_fresh_start_sets_the_last_runs_checkpoints_aside(tmp_path, capsys) -> None:
    """A run started without resume (perhaps by mistake) keeps the previous run's checkpoints in
    ``.previous``, the one before replaced; a resume that finds none there says where they are."""
    from flowerlab.trainer import LAST, resume_from

    folder, aside = tmp_path / "ckpt", tmp_path / "ckpt.previous"
    for run in (1, 2):
        folder.mkdir()
        torch.save({"epoch": run, "state_dict": {}}, folder / LAST)
        assert resume_from(str(folder), False, 12) is None
        assert not folder.exists() and torch.load(aside / LAST)["epoch"] == run  # run 1's replaced
    assert f"set the previous run's checkpoints aside in {aside}" in capsys.readouterr().out
    assert resume_from(str(folder), True, 12) is None
    assert (f"no {folder / LAST} yet, starting from the beginning; the checkpoints a fresh start set "
            f"aside are in {aside}") in capsys.readouterr().out
    assert torch.load(aside / LAST)["epoch"] == 2  # an empty start sets nothing aside over it


def test_a_diverged_network_is_refused_before_export() -> None:
    from flowerlab.errors import StageError
    from flowerlab.trainer import require_finite

    net = ImageClassifier(4)
    require_finite(net, "train", "lr")
    net.head.bias.data[0] = float("nan")
    with pytest.raises(StageError, match=r"training diverged: 1 of the network's \d+ tensors hold NaN or "
                                         r"inf \(the first: head.bias\).*lower 'lr' and run train again"):
        require_finite(net, "train", "lr")
    net.head.bias.data[0] = 0.0
    net.backbone.bn1.running_var[0] = float("inf")  # buffers too: evaluation would use them
    with pytest.raises(StageError, match="the first: backbone.bn1.running_var"):
        require_finite(net, "train", "lr")


@pytest.mark.parametrize(("hardware", "expected"), [
    ({"accelerator": "tpu"}, "torch_xla"),  # never installed here
    ({"strategy": "foo"}, "invalid strategy name"),
])
def test_hardware_this_machine_cannot_run_is_one_config_line(tmp_path, hardware, expected) -> None:
    from flowerlab.config import TrainParams
    from flowerlab.errors import ConfigError
    from flowerlab.trainer import make_trainer

    with pytest.raises(ConfigError, match=f"cannot run here: .*{expected}") as caught:
        make_trainer(TrainParams(**hardware), 1, str(tmp_path / "live"), [], name="train")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("params: train.accelerator=")


def test_export_picks_the_last_or_the_best_checkpoint(tmp_path) -> None:
    from flowerlab.trainer import LAST, checkpoints, exported_checkpoint

    best, last = checkpoints(str(tmp_path), "val/acc", "max")
    best.best_model_path, best.best_model_score = str(tmp_path / "best.ckpt"), torch.tensor(0.9)
    assert exported_checkpoint("last", best, last) == (str(tmp_path / LAST), "the last epoch's")
    path, what = exported_checkpoint("best", best, last)
    assert path == best.best_model_path and what == "the best val/acc epoch's (0.9000)"


@pytest.mark.slow
def test_the_last_checkpoint_holds_the_weights_training_ended_with(tmp_path) -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    from flowerlab.config import TrainParams
    from flowerlab.trainer import checkpoints, exported_checkpoint, make_trainer

    L.seed_everything(0)
    model = FlowerClassifier(ImageClassifier(4), 4, lr=1e-3)
    best, last = checkpoints(str(tmp_path / "ckpt"), "val/acc", "max")
    stopping = EarlyStopping("val/acc", mode="max", patience=100)
    run = make_trainer(TrainParams(accelerator="cpu", precision="32-true"), 3, str(tmp_path / "live"),
                       [best, last, stopping], name="train")
    run.fit(model, tiny_loader(), tiny_loader())
    path, _ = exported_checkpoint("last", best, last)
    saved = FlowerClassifier.load_from_checkpoint(path, map_location="cpu", net=ImageClassifier(4))
    for (name, a), b in zip(model.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(a, b), name


def write_photo_data(folder, train: int = 16, size: int = 64) -> tuple[str, str]:
    """``train`` + 8 random "photos" of 4 classes at ``size`` px, prepared and split train/8/8
    (val and test the same 8): their paths."""
    import numpy as np

    from flowerlab.data.store import PreparedData, save_prepared
    from flowerlab.files import write_json

    rng = np.random.default_rng(0)
    count = train + 8
    save_prepared(PreparedData(rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
                               np.arange(count, dtype=np.int64) % 4, list("abcd"), size, "imagefolder"),
                  [], folder / "prepared")
    write_json(folder / "split.json", {"train": list(range(train)), "val": list(range(train, count)),
                                       "test": list(range(train, count))})
    return str(folder / "prepared"), str(folder / "split.json")


def test_an_epoch_never_ends_on_a_training_batch_of_one_image(tmp_path, monkeypatch) -> None:
    """33 training images at batch 16 crashed BatchNorm on the last batch ("Expected more than 1
    value per channel when training"): that image now waits for another epoch."""
    from flowerlab.config import TrainParams
    from flowerlab.data.datamodule import FlowerData
    from flowerlab.data.transforms import PRESETS
    from flowerlab.trainer import make_trainer

    def batches(train: int) -> list[int]:
        data = FlowerData(*write_photo_data(tmp_path / str(train), train=train, size=16), 16,
                          augmentation=PRESETS["light"])
        data.setup()
        return [len(labels) for _, labels in data.train_dataloader()]

    monkeypatch.chdir(tmp_path)  # Lightning's default checkpoint folder
    assert batches(33) == [16, 16]
    assert batches(34) == [16, 16, 2] and batches(16) == [16]
    with pytest.raises(ValueError, match="'train' split has 1 image"):
        batches(1)
    L.seed_everything(0)
    run = make_trainer(TrainParams(accelerator="cpu", precision="32-true"), 1, str(tmp_path / "live"), [],
                       name="train")
    run.fit(FlowerClassifier(ImageClassifier(4), 4, lr=1e-3),
            datamodule=FlowerData(*write_photo_data(tmp_path / "fit", train=33, size=16), 16,
                                  augmentation=PRESETS["light"]))
    assert run.global_step == 2


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])  # with a worker, the crop runs in another process
def test_progressive_training_reloads_its_batches_at_each_epochs_size(tmp_path, monkeypatch,
                                                                     workers: int) -> None:
    from flowerlab.config import TrainParams
    from flowerlab.data.datamodule import FlowerData
    from flowerlab.data.transforms import PRESETS
    from flowerlab.trainer import make_trainer

    monkeypatch.chdir(tmp_path)
    prepared, split = write_photo_data(tmp_path)
    epochs = 4
    data = FlowerData(prepared, split, 8, num_workers=workers,
                      augmentation=PRESETS["strong"], progressive_epochs=epochs)

    class BatchSides(L.Callback):
        def __init__(self):
            self.sides: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.sides.append(batch[0].shape[-1])

    sides = BatchSides()
    L.seed_everything(0)
    run = make_trainer(TrainParams(accelerator="cpu", precision="32-true"), epochs, "live", [sides],
                       name="train", reload_train_data=True)
    run.fit(FlowerClassifier(ImageClassifier(4), 4, lr=1e-3), datamodule=data)
    expected = [progressive_size(epoch, epochs, 64) for epoch in range(epochs)]
    assert expected[0] == 32 and expected[-1] == 64
    assert sides.sides == [side for side in expected for _ in range(2)]  # 2 batches an epoch


@pytest.mark.slow
def test_a_resumed_progressive_run_trains_each_epoch_at_its_scheduled_size(tmp_path, monkeypatch) -> None:
    """train.resume with progressive resizing: the restored epoch, not epoch 0, sets the size."""
    from flowerlab.config import TrainParams
    from flowerlab.data.datamodule import FlowerData
    from flowerlab.data.transforms import PRESETS
    from flowerlab.trainer import checkpoints, make_trainer, resume_from

    monkeypatch.chdir(tmp_path)
    prepared, split = write_photo_data(tmp_path)
    epochs = 6
    expected = [progressive_size(epoch, epochs, 64) for epoch in range(epochs)]
    assert len(set(expected[3:])) > 1  # the resumed epochs span more than one size

    class Sides(L.Callback):
        def __init__(self):
            self.sides = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.sides.append((trainer.current_epoch, batch[0].shape[-1]))

    def fit(resume: bool, crash_at: int | None) -> Sides:
        sides = Sides()
        L.seed_everything(0)
        data = FlowerData(prepared, split, 8,
                          augmentation=PRESETS["strong"], progressive_epochs=epochs)
        run = make_trainer(TrainParams(accelerator="cpu", precision="32-true"), epochs, "live",
                           [*checkpoints("ckpt", "val/acc", "max"), CrashAtEpoch(crash_at), sides],
                           name="train", reload_train_data=True)
        run.fit(FlowerClassifier(ImageClassifier(4), 4, lr=1e-3), datamodule=data,
                ckpt_path=resume_from("ckpt", resume, epochs))
        return sides

    with pytest.raises(Crash):
        fit(resume=False, crash_at=3)  # epochs 0-2 done, last.ckpt holds the end of epoch 2
    resumed = fit(resume=True, crash_at=None)
    assert resumed.sides == [(epoch, expected[epoch]) for epoch in range(3, epochs) for _ in range(2)]
