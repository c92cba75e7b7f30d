"""One Lightning Trainer recipe for both models: hardware settings from ``train.*``, dvclive logging."""

from __future__ import annotations

import lightning as L
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.profilers import AdvancedProfiler, Profiler, PyTorchProfiler, SimpleProfiler

from flowerlab import paths
from flowerlab.config import TrainParams
from flowerlab.hardware import choose_precision

PROFILERS = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}


class RecordChoices(Callback):
    """Logs what was chosen at run time (precision and why, augmentation) with the
    hyperparameters, once ranks are known."""

    def __init__(self, values: dict[str, str]):
        self.values = values

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.logger is not None:  # the logger writes on global rank 0 only
            trainer.logger.log_hyperparams(self.values)


def make_profiler(kind: str | None, name: str) -> Profiler | None:
    """Lightning's ``kind`` profiler, writing its report to ``profiles/`` (``fit-<name>.txt``)."""
    return None if kind is None else PROFILERS[kind](dirpath=paths.PROFILES, filename=name)


def make_trainer(train: TrainParams, max_epochs: int, log_dir: str, callbacks: list[Callback],
                 name: str, image_size: int | None = None,
                 choices: dict[str, str] | None = None) -> L.Trainer:
    """A deterministic Trainer on ``train``'s accelerator, devices, nodes, strategy and precision,
    logging to dvclive in ``log_dir`` (no dvc.yaml of its own: the project's declares the plots);
    ``name`` names the profiler report when ``train.profiler`` is set. ``train.precision: auto``
    becomes what the hardware computes fastest at ``image_size``; the choice and its reason are
    printed and logged with the hyperparameters (``metrics/<stage>/params.yaml``), with the
    stage's other run-time ``choices``."""
    precision, reason = choose_precision(train.precision, train.accelerator, image_size=image_size)
    print(f"{name}: precision {precision} ({reason})")
    for key, value in (choices or {}).items():
        print(f"{name}: {key} {value}")
    choices = {"precision": precision, "precision_reason": reason, **(choices or {})}
    return L.Trainer(
        max_epochs=max_epochs, accelerator=train.accelerator, devices=train.devices,
        num_nodes=train.num_nodes, strategy=train.strategy, precision=precision,
        deterministic=True, log_every_n_steps=10, profiler=make_profiler(train.profiler, name),
        logger=DVCLiveLogger(dir=log_dir, dvcyaml=False, save_dvc_exp=False),
        callbacks=[*callbacks, RecordChoices(choices), LearningRateMonitor("epoch"),
                   TQDMProgressBar(refresh_rate=10)])
