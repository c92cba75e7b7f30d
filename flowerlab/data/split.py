"""Seeded, stratified train/val/test split of the prepared images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


def split_indices(labels: np.ndarray, val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, list[int]]:
    """Split each class by the fractions, so every split keeps the class balance.

    A class with at least three images gets at least one in each split.
    """
    rng = np.random.default_rng(seed)
    result: dict[str, list[int]] = {name: [] for name in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n = len(members)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        if n >= 3:
            n_test, n_val = max(n_test, 1), max(n_val, 1)
        n_test = min(n_test, n - 1) if n > 1 else 0
        n_val = min(n_val, n - n_test - 1) if n - n_test > 1 else 0
        result["test"] += members[:n_test].tolist()
        result["val"] += members[n_test:n_test + n_val].tolist()
        result["train"] += members[n_test + n_val:].tolist()
    return {name: sorted(indices) for name, indices in result.items()}


def load_split(path: Path | str) -> dict[str, list[int]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no split file {path}: run the split stage first")
    return json.loads(path.read_text())
