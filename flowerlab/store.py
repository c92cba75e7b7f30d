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
from tqdm import tqdm

from flowerlab.imaging import ImageDecodeError, ImageTooLargeError, square_resize
from flowerlab.sources import RawDataset


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


def write_json(path: Path, payload) -> None:
    """Write JSON deterministically (sorted keys, fixed indentation) so hashes reproduce."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def prepare_images(raw: RawDataset, image_size: int, source: str,
                   progress: bool = True) -> tuple[PreparedData, list[dict]]:
    """Decode and resize every item; unreadable ones are skipped and returned as a report."""
    images = np.empty((len(raw.items), image_size, image_size, 3), dtype=np.uint8)
    labels, splits, skipped = [], [], []
    for item in tqdm(raw.items, desc="prepare", unit="img", disable=not progress, mininterval=2):
        try:
            tensor = square_resize(item.load(), image_size)
        except (ImageDecodeError, ImageTooLargeError, OSError) as error:
            skipped.append({"file": item.name, "reason": str(error)})
            continue
        images[len(labels)] = tensor.permute(1, 2, 0).numpy()
        labels.append(item.label)
        splits.append(item.split)
    official = None
    if raw.has_official_split:
        official = {name: [i for i, s in enumerate(splits) if s == name]
                    for name in ("train", "val", "test")}
    data = PreparedData(images[: len(labels)], np.asarray(labels, dtype=np.int64),
                        raw.classes, image_size, source, official)
    return data, skipped


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
