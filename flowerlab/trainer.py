"""One Lightning Trainer recipe for both models: hardware settings from ``train.*``, dvclive logging."""

from __future__ import annotations

import lightning as L
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, TQDMProgressBar

from flowerlab.config import TrainParams


def make_trainer(train: TrainParams, max_epochs: int, log_dir: str, callbacks: list[Callback]) -> L.Trainer:
    """A deterministic Trainer on ``train``'s accelerator, devices, nodes, strategy and precision,
    logging to dvclive in ``log_dir`` (no dvc.yaml of its own: the project's declares the plots)."""
    return L.Trainer(
        max_epochs=max_epochs, accelerator=train.accelerator, devices=train.devices,
        num_nodes=train.num_nodes, strategy=train.strategy, precision=train.precision,
        deterministic=True, log_every_n_steps=10,
        logger=DVCLiveLogger(dir=log_dir, dvcyaml=False, save_dvc_exp=False),
        callbacks=[*callbacks, LearningRateMonitor("epoch"), TQDMProgressBar(refresh_rate=10)])
