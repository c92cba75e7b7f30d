"""One Lightning Trainer recipe for both models: hardware settings from ``train.*``, dvclive logging."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import torch
from dvclive.lightning import DVCLiveLogger
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
from lightning.pytorch.profilers import AdvancedProfiler, Profiler, PyTorchProfiler, SimpleProfiler

from flowerlab import paths
from flowerlab.config import TrainParams
from flowerlab.errors import ConfigError, DivergedError, ResumeError
from flowerlab.hardware import choose_precision

PROFILERS = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}
LAST = "last.ckpt"
PREVIOUS = ".previous"  # suffix of the folder a fresh start sets the last run's checkpoints aside in


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place: a run
    killed mid-write leaves the previous checkpoint whole, never a partial one."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)


class RngState(Callback):
    """Puts the Python, NumPy and torch random states in each checkpoint and restores them on
    resume, so the resumed epochs draw the same shuffles and augmentations."""

    # Plain tensors, ints and tuples only: checkpoints load with torch.load(weights_only=True).
    def state_dict(self) -> dict:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        return {"python": random.getstate(), "torch": torch.get_rng_state(),
                "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)}

    def load_state_dict(self, state_dict: dict) -> None:
        random.setstate(state_dict["python"])
        torch.set_rng_state(state_dict["torch"])
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))


class RelocatableCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose state names its files relative to its folder.

    Lightning's own records the absolute paths of the checkout it ran in, in every full checkpoint.
    So the same run saved different bytes in two checkouts (``dvc.lock`` changed with the clone's
    path), and a run resumed in another place (a queued experiment's temporary workspace, a
    moved checkout) dropped its best-model record with a warning. Here the state holds the files'
    names and ``dirpath`` ``"."``, and is restored under this run's own ``dirpath``.
    """

    FILES = ("best_model_path", "kth_best_model_path", "last_model_path")

    def state_dict(self) -> dict:
        return self._moved(super().state_dict(), lambda path: os.path.relpath(path, self.dirpath), ".")

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("dirpath") == "." and self.dirpath:  # saved by this class: names in dirpath
            state_dict = self._moved(state_dict, lambda name: os.path.join(self.dirpath, name), self.dirpath)
        super().load_state_dict(state_dict)

    def _moved(self, state: dict, move, dirpath: str) -> dict:
        """``state`` with its file paths moved by ``move`` (empty ones kept) and ``dirpath`` set."""
        def moved(path: str) -> str:
            return move(path) if path else path

        files = {key: moved(state[key]) for key in self.FILES if key in state}
        best_k = {moved(path): score for path, score in state.get("best_k_models", {}).items()}
        return {**state, **files, "dirpath": dirpath, "best_k_models": best_k}


def checkpoints(dirpath: str, monitor: str, mode: str) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``best.ckpt`` (weights of the best ``monitor`` epoch, for export) and ``last.ckpt`` (the
    full state after every epoch: weights, optimizer, schedule, epoch, callbacks, RNG; for
    ``train.resume``)."""
    best = RelocatableCheckpoint(dirpath=dirpath, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                                 enable_version_counter=False, save_weights_only=True)
    last = RelocatableCheckpoint(dirpath=dirpath, filename=Path(LAST).stem, save_top_k=1,
                                 enable_version_counter=False)
    return best, last


def exported_checkpoint(choice: str, best: ModelCheckpoint, last: ModelCheckpoint) -> tuple[str, str]:
    """The checkpoint whose weights to export for ``train.export`` and what they are: ``last``, the
    weights training ended with (the cosine schedule's end, or where early stopping ended it);
    ``best``, the best ``monitor`` epoch's. On a small validation set the best epoch is partly
    picked by the set's noise: on 960 real photos (96 val, 144 test images), 3 seeds, the last
    epoch tested 0.882, 0.903, 0.840 where the best val/acc epoch tested 0.854, 0.889, 0.826
    (README, "Your own photos")."""
    if choice == "best":
        return best.best_model_path, f"the best {best.monitor} epoch's ({float(best.best_model_score):.4f})"
    return str(Path(last.dirpath) / LAST), "the last epoch's"


def resume_from(dirpath: str, resume: bool, epochs: int, owner: bool = True) -> str | None:
    """The full checkpoint to continue a run of ``epochs`` epochs from, when ``resume`` and one
    exists; else ``None``, and an empty ``dirpath``: what it held (the last run's checkpoints) is
    set aside in ``<dirpath>.previous``, replacing what an earlier fresh start set aside there, so a
    run started by mistake loses nothing it could have resumed. The folder is no DVC output
    (dvc.yaml says why), so it holds what the last run in this workspace left there. Call it just
    before training, once everything that can refuse the run has been checked; under DDP every
    process calls it, and only the ``owner`` (global rank 0) moves or clears the folder."""
    folder, aside = Path(dirpath), Path(f"{dirpath}{PREVIOUS}")
    last = folder / LAST
    if resume and last.is_file():
        done = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"] + 1
        if done > epochs:
            raise ResumeError(f"train.resume: {last} has trained {done} epochs, more than epochs={epochs}: "
                              f"set epochs above {done} to train on, or train.resume=false to start over")
        print(f"resuming from {last} after its epoch {done} of {epochs}")
        return str(last)
    if resume:
        kept = (f"; the checkpoints a fresh start set aside are in {aside} (move them back to "
                f"{folder} to resume them)" if (aside / LAST).is_file() else "")
        print(f"train.resume: no {last} yet, starting from the beginning{kept}")
    if not owner:
        return None
    if folder.is_dir() and any(folder.iterdir()):
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        print(f"set the previous run's checkpoints aside in {aside}")
    shutil.rmtree(folder, ignore_errors=True)
    return None


def diverged(what: str, stage: str, lr_key: str) -> DivergedError:
    """The error for a run that diverged (``what`` says how it shows): nothing exported, and the fix."""
    return DivergedError(f"training diverged: {what}, so nothing was exported. The usual cause is a "
                         f"learning rate too high: lower '{lr_key}' and run {stage} again")


def require_finite(net: torch.nn.Module, stage: str, lr_key: str) -> None:
    """Raise :class:`DivergedError` unless every weight and buffer of ``net`` is finite: a diverged
    run (nan or inf everywhere) is not exported as a model."""
    tensors = [*net.named_parameters(), *net.named_buffers()]
    bad = [name for name, tensor in tensors if tensor.is_floating_point() and not tensor.isfinite().all()]
    if bad:
        raise diverged(f"{len(bad)} of the network's {len(tensors)} tensors hold NaN or inf (the first: "
                       f"{bad[0]})", stage, lr_key)


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
                 choices: dict[str, str] | None = None,
                 precision: tuple[str, str] | None = None, reload_train_data: bool = False) -> L.Trainer:
    """A deterministic Trainer on ``train``'s accelerator, devices, nodes, strategy and precision,
    logging to dvclive in ``log_dir`` (no dvc.yaml of its own: the project's declares the plots);
    ``name`` names the profiler report when ``train.profiler`` is set. ``train.precision: auto``
    becomes what the hardware computes fastest at ``image_size``; the choice and its reason are
    printed and logged with the hyperparameters (``metrics/<stage>/params.yaml``), with the
    stage's other run-time ``choices``; ``precision`` is that choice where the stage made it already.
    ``reload_train_data``: a new training loader every epoch (progressive resizing)."""
    precision, reason = precision or choose_precision(train.precision, train.accelerator,
                                                      image_size=image_size)
    print(f"{name}: precision {precision} ({reason})")
    for key, value in (choices or {}).items():
        print(f"{name}: {key} {value}")
    choices = {"precision": precision, "precision_reason": reason, **(choices or {})}
    try:
        return L.Trainer(
            max_epochs=max_epochs, accelerator=train.accelerator, devices=train.devices,
            num_nodes=train.num_nodes, strategy=train.strategy, precision=precision,
            deterministic=True, log_every_n_steps=10, profiler=make_profiler(train.profiler, name),
            reload_dataloaders_every_n_epochs=1 if reload_train_data else 0,
            # written in a background thread (a point-in-time copy): 0.5-1 s an epoch off the step loop
            plugins=[AsyncCheckpointIO(AtomicCheckpointIO())],
            logger=DVCLiveLogger(dir=log_dir, dvcyaml=False, save_dvc_exp=False),
            callbacks=[*callbacks, RecordChoices(choices), RngState(), LearningRateMonitor("epoch"),
                       TQDMProgressBar(refresh_rate=10)])
    except (MisconfigurationException, ModuleNotFoundError, ValueError) as error:
        # Hardware this machine lacks (accelerator gpu without CUDA, tpu without torch_xla), or a
        # strategy name Lightning does not know: Lightning's own words, on one line.
        raise ConfigError(f"params: train.accelerator={train.accelerator!r}, devices={train.devices!r}, "
                          f"strategy={train.strategy!r} cannot run here: "
                          f"{' '.join(str(error).split())}") from None
