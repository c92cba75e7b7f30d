"""Decoding every source item once, in parallel worker processes, into the prepared store."""

from __future__ import annotations

import os

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from flowerlab.data.sources import RawDataset, SourceItem
from flowerlab.data.store import PreparedData
from flowerlab.errors import SourceError
from flowerlab.imaging import ExtremeAspectError, ImageDecodeError, ImageTooLargeError, square_resize

# Below this many items, worker start-up costs more than it saves.
PARALLEL_MIN_ITEMS = 512
# Items travel from workers in lists of this many, as numpy arrays: sending each small tensor
# through shared memory on its own made two workers twice as slow as none.
CHUNK = 64


class DecodedItems(Dataset):
    """Each item loaded and resized to (H, W, 3) uint8, or why it could not be: ``(array | None, reason)``."""

    def __init__(self, items: list[SourceItem], image_size: int):
        self.items, self.image_size = items, image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, str | None]:
        try:
            return square_resize(self.items[index].load(), self.image_size).permute(1, 2, 0).numpy(), None
        except (ImageDecodeError, ImageTooLargeError, ExtremeAspectError, OSError) as error:
            return None, str(error)


def prepare_images(raw: RawDataset, image_size: int, source: str, progress: bool = True,
                   workers: int | None = None) -> tuple[PreparedData, list[dict]]:
    """Decode and resize every item; unreadable ones are skipped and returned as a report.

    The result does not depend on ``workers``: the loader keeps the items' order.
    """
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if len(raw.items) >= PARALLEL_MIN_ITEMS else 0
    chunks = DataLoader(DecodedItems(raw.items, image_size), batch_size=CHUNK, num_workers=workers,
                        collate_fn=list)
    decoded = (sample for chunk in chunks for sample in chunk)
    images = np.empty((len(raw.items), image_size, image_size, 3), dtype=np.uint8)
    labels, splits, skipped = [], [], []
    for item, (pixels, reason) in zip(raw.items, tqdm(decoded, desc="prepare", unit="img",
                                                      total=len(raw.items), disable=not progress,
                                                      mininterval=2)):
        if pixels is None:
            skipped.append({"file": item.name, "reason": reason})
            continue
        images[len(labels)] = pixels
        labels.append(item.label)
        splits.append(item.split)
    official = None
    if raw.has_official_split:
        official = {name: [i for i, s in enumerate(splits) if s == name]
                    for name in ("train", "val", "test")}
    data = PreparedData(images[: len(labels)], np.asarray(labels, dtype=np.int64),
                        raw.classes, image_size, source, official)
    return data, skipped


# prepare prints the reasons of this many skipped files; report.json holds them all.
SKIPPED_SHOWN = 20


def require_classes(data: PreparedData, skipped: list[dict], source: str) -> None:
    """Raise :class:`SourceError` unless the store can train a classifier: some images, at least two
    classes, and at least one image in every class (a class whose files were all skipped would
    otherwise stay in the model, predictable and never seen)."""
    reasons = f"the reasons above{f' for the first {SKIPPED_SHOWN}' if len(skipped) > SKIPPED_SHOWN else ''}"
    if len(data.labels) == 0:
        raise SourceError(f"no readable images in the {source} source ({len(skipped)} files skipped, "
                          f"{reasons})")
    counts = np.bincount(data.labels, minlength=len(data.classes))
    empty = [name for name, count in zip(data.classes, counts, strict=True) if count == 0]
    if empty:
        raise SourceError(f"{len(empty)} class(es) kept no readable image, all their files skipped "
                          f"({len(skipped)} in all, {reasons}): "
                          f"{', '.join(map(repr, empty[:10]))}. Add images to them or remove them")
    if len(data.classes) < 2:
        raise SourceError(f"only one class ({data.classes[0]!r}) in the {source} source: a classifier "
                          f"needs at least two")
