"""Drift statistics shared by the pipeline (which records a reference) and the service (which
compares a window of requests with it): per-image colour statistics and the model's confidence.

Each statistic is a distribution of per-image values; drift is the two-sample Kolmogorov-Smirnov
statistic (scipy) between the reference's values and the window's: 0 for the same distribution,
1 for disjoint ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp

IMAGE_STATISTICS = ("red", "green", "blue", "brightness", "contrast")
STATISTICS = (*IMAGE_STATISTICS, "confidence")
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image of uint8 (N, 3, H, W): mean red, green and blue, and the mean (brightness) and
    standard deviation (contrast) of luma, all in [0, 1]."""
    pixels = np.asarray(images, dtype=np.float32).reshape(len(images), 3, -1) / 255
    luma = np.einsum("c,ncp->np", LUMA, pixels)
    means = pixels.mean(axis=2)
    return {"red": means[:, 0], "green": means[:, 1], "blue": means[:, 2],
            "brightness": luma.mean(axis=1), "contrast": luma.std(axis=1)}


def confidences(probabilities: np.ndarray) -> np.ndarray:
    """The top-1 softmax probability of each row."""
    return np.asarray(probabilities, dtype=np.float32).max(axis=1)


MAX_SAMPLES = 2000


def reference_indices(indices: list[int], max_samples: int = MAX_SAMPLES, seed: int = 0) -> list[int]:
    """At most ``max_samples`` of ``indices``, drawn without replacement from a fixed seed."""
    if len(indices) <= max_samples:
        return list(indices)
    return sorted(np.random.default_rng(seed).choice(indices, max_samples, replace=False).tolist())


def build_reference(train_images: np.ndarray, val_probabilities: np.ndarray) -> dict[str, list[float]]:
    """The values of each statistic: colour statistics of training images (uint8, N, 3, H, W), and
    the model's confidence on validation images."""
    values = {**image_statistics(train_images), "confidence": confidences(val_probabilities)}
    return {name: [round(float(v), 5) for v in values[name][:MAX_SAMPLES]] for name in STATISTICS}


def write_reference(path: Path | str, reference: dict[str, list[float]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reference, sort_keys=True) + "\n")


def read_reference(path: Path | str) -> dict[str, np.ndarray]:
    """The reference file; ValueError if it lacks a statistic or a statistic has no values."""
    raw = json.loads(Path(path).read_text())
    missing = [name for name in STATISTICS if not raw.get(name)]
    if missing:
        raise ValueError(f"{path} has no values for {missing}")
    return {name: np.asarray(raw[name], dtype=np.float64) for name in STATISTICS}


def drift_scores(reference: dict[str, np.ndarray], window: dict[str, np.ndarray]) -> dict[str, float]:
    """The KS statistic of each statistic's window values against the reference's."""
    return {name: float(ks_2samp(reference[name], window[name]).statistic)
            for name in STATISTICS if len(window.get(name, ())) > 0}
