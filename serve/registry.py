"""The models the service loads: only the exact files that dvc.lock records as stage outputs.

Adding a model is a new :class:`LockedArtifact` in :data:`SERVED_ARTIFACTS`; the lifespan handler
then verifies and loads it with the rest, and refuses to start if any of them does not match.

The optimize stage's classifier (:data:`CLASSIFIER_SERVED`) is verified the same way, but it is
optional: where this CPU lacks a flag it requires or it does not load, :func:`load_optimized` says
why and the service serves the portable models/classifier.pt2 instead.
"""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from flowerlab import paths
from flowerlab.export import ServedClassifierMeta, load_program, load_scripted, read_scripted_meta
from flowerlab.files import file_md5
from flowerlab.hardware import cpu_flags

logger = logging.getLogger(__name__)

OPTIMIZE_STAGE = "optimize"
EVALUATE_STAGE = "evaluate"
EVALUATE_VAE_STAGE = "evaluate_vae"


class ModelLoadError(RuntimeError):
    """The service must not start: dvc.lock or a model file is missing, mismatched or unusable."""


@dataclass(frozen=True)
class LockedArtifact:
    """A ``.pt2`` file that ``stage`` in dvc.lock records as an output at ``path`` (repo-relative)."""

    name: str
    stage: str
    path: str


CLASSIFIER = LockedArtifact("classifier", "train", paths.CLASSIFIER)
VAE_ENCODER = LockedArtifact("vae_encoder", "train_vae", paths.VAE_ENCODER)
VAE_DECODER = LockedArtifact("vae_decoder", "train_vae", paths.VAE_DECODER)
SERVED_ARTIFACTS: tuple[LockedArtifact, ...] = (CLASSIFIER, VAE_ENCODER, VAE_DECODER)
CLASSIFIER_SERVED = LockedArtifact("classifier_served", OPTIMIZE_STAGE, paths.CLASSIFIER_SERVED)


@dataclass(frozen=True)
class LoadedArtifact:
    """A verified, loaded program with its embedded metadata and the md5 dvc.lock vouches for."""

    artifact: LockedArtifact
    module: torch.nn.Module
    meta: dict[str, Any]
    md5: str


def _same_path(a: str, b: str) -> bool:
    # dvc.lock writes POSIX paths relative to dvc.yaml, sometimes with a leading "./".
    return posixpath.normpath(a) == posixpath.normpath(b)


def read_lock(lock_path: Path | str) -> dict[str, Any]:
    """Parse dvc.lock, or raise :class:`ModelLoadError` saying how to produce it."""
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        raise ModelLoadError(f"{lock_path} not found: run `dvc repro` (or `dvc pull`) first")
    try:
        lock = yaml.safe_load(lock_path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ModelLoadError(f"cannot read {lock_path}: {error}") from None
    if not isinstance(lock, dict) or not isinstance(lock.get("stages"), dict):
        raise ModelLoadError(f"{lock_path} has no 'stages' mapping")
    return lock


def locked_md5(lock: dict[str, Any], path: str, stage: str | None = None, section: str = "outs") -> str:
    """The md5 that dvc.lock records for ``path`` among a stage's ``outs`` (or ``deps``).

    Without ``stage`` every stage is searched: DVC allows only one stage to output a path.
    """
    stages = lock["stages"]
    kind = {"outs": "output", "deps": "dependency"}.get(section, section)
    if stage is not None and stage not in stages:
        raise ModelLoadError(f"dvc.lock has no stage '{stage}': run `dvc repro {stage}`")
    names = [stage] if stage is not None else list(stages)
    for name in names:
        for entry in (stages[name] or {}).get(section) or []:
            if isinstance(entry, dict) and _same_path(str(entry.get("path", "")), path):
                if not entry.get("md5"):
                    raise ModelLoadError(f"dvc.lock stage '{name}' records {path} without an md5")
                return str(entry["md5"])
    where = f"stage '{stage}'" if stage is not None else "any stage"
    raise ModelLoadError(f"dvc.lock records no {kind} {path} in {where}")


def locked_output(lock_path: Path | str, out_path: str, stage: str | None = None) -> str:
    """The md5 dvc.lock at ``lock_path`` records for the output ``out_path``."""
    return locked_md5(read_lock(lock_path), out_path, stage)


def verified_md5(root: Path, path: str, expected: str) -> str:
    """Check that ``root / path`` exists and has the ``expected`` md5; return it."""
    file = root / path
    if not file.is_file():
        raise ModelLoadError(f"{path} is missing under {root}: run `dvc checkout` (or `dvc pull`)")
    actual = file_md5(file)
    if actual != expected:
        raise ModelLoadError(
            f"{path} has md5 {actual} but dvc.lock records {expected}: the file does not match dvc.lock; "
            f"run `dvc checkout {path}` or `dvc repro`")
    return actual


def load_artifact(root: Path, artifact: LockedArtifact, lock: dict[str, Any]) -> LoadedArtifact:
    """Verify ``artifact`` against ``lock`` and load it."""
    md5 = verified_md5(root, artifact.path, locked_md5(lock, artifact.path, artifact.stage))
    try:
        module, meta = load_program(root / artifact.path)
    except Exception as error:  # torch.export raises many types for an unreadable program
        raise ModelLoadError(f"cannot load {artifact.path}: {error}") from None
    return LoadedArtifact(artifact, module, meta, md5)


def load_artifacts(root: Path, artifacts: tuple[LockedArtifact, ...] = SERVED_ARTIFACTS
                   ) -> dict[str, LoadedArtifact]:
    """Load every artifact, keyed by name; raise :class:`ModelLoadError` at the first problem."""
    lock = read_lock(root / paths.DVC_LOCK)
    return {artifact.name: load_artifact(root, artifact, lock) for artifact in artifacts}


def load_optimized(root: Path, flags: set[str] | None = None) -> tuple[LoadedArtifact | None, str | None]:
    """The optimize stage's classifier, verified against dvc.lock and loaded; or None and why not
    (None and no reason: dvc.lock predates the optimize stage). ``flags``: this CPU's, by default.

    Missing or differing from dvc.lock raises :class:`ModelLoadError`, as for every locked model.
    """
    lock = read_lock(root / paths.DVC_LOCK)
    if OPTIMIZE_STAGE not in lock["stages"]:
        logger.info("dvc.lock has no %s stage (an older lock): serving %s", OPTIMIZE_STAGE, CLASSIFIER.path)
        return None, None
    artifact = CLASSIFIER_SERVED
    md5 = verified_md5(root, artifact.path, locked_md5(lock, artifact.path, artifact.stage))
    try:  # the flags first: loading may already run kernels (int8 weight packing) this CPU lacks
        meta = ServedClassifierMeta.model_validate(read_scripted_meta(root / artifact.path))
        flags = cpu_flags() if flags is None else flags
        if missing := [flag for flag in meta.requires_cpu_flags if flag not in flags]:
            return None, (f"this CPU lacks {', '.join(missing)}, which the {meta.artifact} "
                          f"{artifact.path} requires")
        module, raw = load_scripted(root / artifact.path)
    except Exception as error:  # torch.jit and zipfile raise many types for an unreadable file
        return None, f"cannot load {artifact.path}: {error}"
    return LoadedArtifact(artifact, module, raw, md5), None


def read_vouched_metrics(root: Path, metrics_path: str, stage: str, models: dict[str, str]
                         ) -> dict[str, Any] | None:
    """``metrics_path``, but only if dvc.lock shows ``stage`` wrote this very file from these very
    models (``models`` maps each model path to the md5 being served); otherwise None.
    """
    metrics_file = root / metrics_path
    if not metrics_file.is_file():
        logger.info("no %s: /ready reports its metrics as null", metrics_path)
        return None
    try:
        lock = read_lock(root / paths.DVC_LOCK)
        for model_path, model_md5 in models.items():
            evaluated = locked_md5(lock, model_path, stage, section="deps")
            if evaluated != model_md5:
                raise ModelLoadError(f"the {stage} stage ran on {model_path} md5 {evaluated}, "
                                     f"not {model_md5}")
        verified_md5(root, metrics_path, locked_md5(lock, metrics_path, stage))
        return json.loads(metrics_file.read_text())
    except (ModelLoadError, OSError, ValueError) as error:
        # Stale metrics would misdescribe the model; leave them out rather than refuse to serve.
        logger.warning("not reporting %s: %s", metrics_path, error)
        return None


def read_test_metrics(root: Path, model_md5: str) -> dict[str, Any] | None:
    """metrics/evaluate.json, but only if dvc.lock shows it was computed from this very model."""
    return read_vouched_metrics(root, paths.EVALUATE_METRICS, EVALUATE_STAGE, {paths.CLASSIFIER: model_md5})


def read_vae_metrics(root: Path, encoder_md5: str, decoder_md5: str, classifier_md5: str
                     ) -> dict[str, Any] | None:
    """metrics/vae.json, but only if dvc.lock shows evaluate_vae computed it from these very models.

    The classifier counts too: it scores the samples (classifier_confidence, fd_classifier, ...).
    """
    return read_vouched_metrics(root, paths.VAE_METRICS, EVALUATE_VAE_STAGE, {
        paths.VAE_ENCODER: encoder_md5, paths.VAE_DECODER: decoder_md5, paths.CLASSIFIER: classifier_md5})
