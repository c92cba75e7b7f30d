"""The prepared store: every image decoded and resized once into one uint8 array.

Layout of ``data/prepared``: ``images.npy`` (N, H, W, 3) uint8, ``labels.npy`` (N,) int64,
``meta.json`` (classes, image size, source, official split if any) and ``report.json``
(every skipped file and why). Training memory-maps ``images.npy``: no per-epoch decoding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowerlab.files import write_json


@dataclass
class PreparedData:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    classes: list[str]
    image_size: int
    source: str
    official_split: dict[str, list[int]] | None = None

    def tensors(self, indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as (N, 3, H, W) uint8 and labels as int64, optionally for ``indices``."""
        images = self.images if indices is None else self.images[np.asarray(indices)]
        labels = self.labels if indices is None else self.labels[np.asarray(indices)]
        return (torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2),
                torch.from_numpy(np.asarray(labels, dtype=np.int64)))


def save_prepared(data: PreparedData, skipped: list[dict], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", data.images)
    np.save(folder / "labels.npy", data.labels)
    write_json(folder / "meta.json", {"classes": data.classes, "image_size": data.image_size,
                                      "source": data.source, "official_split": data.official_split})
    write_json(folder / "report.json", {"skipped": skipped})


def load_prepared(folder: Path | str) -> PreparedData:
    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(f"no prepared data in {folder}: run the prepare stage first")
    meta = json.loads((folder / "meta.json").read_text())
    return PreparedData(np.load(folder / "images.npy", mmap_mode="r"),
                        np.load(folder / "labels.npy"), meta["classes"], meta["image_size"],
                        meta["source"], meta["official_split"])
