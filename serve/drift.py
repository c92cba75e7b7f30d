"""Drift monitoring: the statistics of the last requests against the reference `evaluate` recorded.

The reference (``models/drift_reference.json``) is loaded only when dvc.lock records it as the
``evaluate`` stage's output with this md5; otherwise monitoring is off and says why. Scores are
KS statistics (``flowerlab.drift``), exported as the Prometheus gauge ``flowerlab_drift_score``
(label ``statistic``) and in ``GET /monitoring``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path

import numpy as np
from prometheus_client import Gauge

from flowerlab import paths
from flowerlab.drift import (
    IMAGE_STATISTICS,
    STATISTICS,
    confidences,
    drift_scores,
    image_statistics,
    read_reference,
)
from serve.registry import ModelLoadError, locked_md5, read_lock, verified_md5

logger = logging.getLogger(__name__)
EVALUATE_STAGE = "evaluate"
DRIFT_SCORE = Gauge("flowerlab_drift_score", "KS statistic of the recent requests against the training "
                    "reference (0: same distribution, 1: disjoint); NaN until enough requests",
                    ["statistic"])


def load_reference(root: Path) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The reference dvc.lock vouches for, or None and why not, logged: at INFO where dvc.lock records
    none (a lock from before the reference), as a WARNING where the recorded file is missing or differs."""
    try:
        md5 = locked_md5(read_lock(root / paths.DVC_LOCK), paths.DRIFT_REFERENCE, EVALUATE_STAGE)
    except ModelLoadError as error:
        logger.info("drift monitoring is off: %s", error)
        return None, str(error)
    try:
        verified_md5(root, paths.DRIFT_REFERENCE, md5)
        return read_reference(root / paths.DRIFT_REFERENCE), None
    except (ModelLoadError, ValueError, OSError) as error:
        logger.warning("drift monitoring is off: %s", error)
        return None, str(error)


class DriftMonitor:
    """The last ``window`` requests' statistics; scores once ``min_samples`` have arrived."""

    def __init__(self, reference: dict[str, np.ndarray] | None, window: int, min_samples: int,
                 threshold: float, disabled_reason: str | None = None):
        self.reference, self.window, self.min_samples = reference, window, min_samples
        self.threshold, self.disabled_reason = threshold, disabled_reason
        self.values = {name: deque(maxlen=window) for name in STATISTICS}
        self.lock = threading.Lock()
        for name in STATISTICS:
            DRIFT_SCORE.labels(name).set_function(lambda name=name: self.scores().get(name, float("nan")))

    @property
    def enabled(self) -> bool:
        return self.reference is not None

    def observe(self, images: np.ndarray, probabilities: np.ndarray) -> None:
        """Record uint8 images (N, 3, H, W) as the model saw them, and its probabilities (N, C)."""
        if not self.enabled:
            return
        values = {**image_statistics(images), "confidence": confidences(probabilities)}
        with self.lock:
            for name in STATISTICS:
                self.values[name].extend(values[name].tolist())

    def scores(self) -> dict[str, float]:
        with self.lock:
            window = {name: np.asarray(self.values[name]) for name in STATISTICS}
        if not self.enabled or len(window[IMAGE_STATISTICS[0]]) < self.min_samples:
            return {}
        return drift_scores(self.reference, window)

    def report(self) -> dict:
        scores = self.scores()
        return {"enabled": self.enabled, "disabled_reason": self.disabled_reason,
                "window": len(self.values[IMAGE_STATISTICS[0]]), "window_size": self.window,
                "min_samples": self.min_samples, "threshold": self.threshold, "scores": scores,
                "drifted": sorted(name for name, score in scores.items() if score > self.threshold)}
