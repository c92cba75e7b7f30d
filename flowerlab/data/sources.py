"""Image sources named by ``data.source``: each lists its items lazily, prepare decodes them."""

from __future__ import annotations

import contextlib
import csv
import os
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import Flowers102, ImageFolder

from flowerlab.config import DataParams, Source
from flowerlab.data import synthetic
from flowerlab.errors import SourceError
from flowerlab.files import load_failure
from flowerlab.imaging import ImageDecodeError, decode_image

FLOWERS102_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
FLOWERS102_CLASSES = (Path(__file__).with_name("flowers102_classes.txt")
                      .read_text().strip().splitlines())


@dataclass(frozen=True)
class SourceItem:
    """One image to prepare: a name for reports, its label, how to load it, its official split."""

    name: str
    label: int
    load: Callable[[], Image.Image | torch.Tensor]
    split: str | None = None


@dataclass(frozen=True)
class RawDataset:
    classes: list[str]
    items: list[SourceItem]

    @property
    def has_official_split(self) -> bool:
        return bool(self.items) and all(item.split for item in self.items)


def _path_only(path: str) -> str:
    """A torchvision loader that defers decoding, so prepare can report bad files one by one."""
    return path


def read_synthetic(params: DataParams, seed: int) -> RawDataset:
    rng_image = synthetic.render_flower
    items = [
        SourceItem(f"synthetic/{c:03d}/{i:04d}", c,
                   partial(lambda c, i: rng_image(c, np.random.default_rng([seed, c, i]),
                                                  params.image_size), c, i))
        for c in range(synthetic.NUM_CLASSES) for i in range(params.samples_per_class)
    ]
    return RawDataset(synthetic.class_names(), items)


def read_flowers102(params: DataParams) -> RawDataset:
    root = Path(params.path)
    folder_was_there = (root / "flowers-102").exists()
    items: list[SourceItem] = []
    for split in ("train", "val", "test"):
        try:
            dataset = Flowers102(root, split=split, download=params.download, loader=_path_only)
        except (urllib.error.URLError, OSError, RuntimeError) as error:
            if not folder_was_there:  # the failed download's empty folder would read as a class
                with contextlib.suppress(OSError):  # later, to data.source: imagefolder
                    (root / "flowers-102").rmdir()
            online = ("The download failed: check the network." if params.download
                      else "On a machine with network, set data.download: true.")
            folder = root / "flowers-102"
            missing = [name for name, there in (("jpg/", (folder / "jpg").is_dir()),
                                                ("imagelabels.mat", (folder / "imagelabels.mat").is_file()),
                                                ("setid.mat", (folder / "setid.mat").is_file())) if not there]
            # torchvision's own text ("You can use download=True") names its argument, not our param.
            why = (f"{error}" if params.download else
                   f"missing: {', '.join(missing)}" if missing else
                   f"the files are there but do not match torchvision's checksums: {error}")
            raise SourceError(
                f"Flowers102 is not available under {folder} ({why}). "
                f"{online} Offline, download "
                f"102flowers.tgz, imagelabels.mat and setid.mat from {FLOWERS102_URL}, unpack "
                f"the archive so that {root / 'flowers-102' / 'jpg'} holds the images, and put "
                f"the two .mat files in {root / 'flowers-102'}.") from None
        for index in range(len(dataset)):
            path, label = dataset[index]
            items.append(SourceItem(Path(path).name, int(label),
                                    partial(decode_image, Path(path), draft_size=params.image_size),
                                    split))
    return RawDataset(list(FLOWERS102_CLASSES), items)


class VisibleImageFolder(ImageFolder):
    """torchvision's ImageFolder without hidden class folders (``.ipynb_checkpoints``, ``.git``),
    which it would take as classes."""

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = sorted(entry.name for entry in os.scandir(directory)
                         if entry.is_dir() and not entry.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"no class folders in {directory}")
        return classes, {name: index for index, name in enumerate(classes)}


def _same_file(first: str) -> Image.Image:
    raise ImageDecodeError(f"the same file as {first}, reached again through a symbolic link: used once")


def read_imagefolder(params: DataParams) -> RawDataset:
    root = Path(params.path)
    if root.exists() and not root.is_dir():
        raise SourceError(f"data.path {root} is a file: set it to a folder with one subfolder per class")
    if not root.is_dir():
        raise SourceError(f"image folder not found: {root} (expected one subfolder per class)")

    def visible(path: str) -> bool:  # no hidden files, nor files in hidden folders within a class
        return not any(part.startswith(".") for part in Path(path).relative_to(root).parts)

    try:
        # Accept every file so that non-images are reported by prepare, not silently dropped.
        dataset = VisibleImageFolder(root, loader=_path_only, is_valid_file=visible)
    except (FileNotFoundError, OSError) as error:
        raise SourceError(f"cannot read image folder {root}: {error} (every class folder needs at "
                          f"least one image: add some, or remove the folder)") from None
    loose = sorted(entry.name for entry in os.scandir(root)
                   if entry.is_file() and not entry.name.startswith(".") and entry.name != "README.md")
    if loose:
        print(f"note: {len(loose)} file(s) directly in {root} belong to no class folder, so not used: "
              f"{_first_few(loose)}")
    items, first_name = [], {}
    for path, label in dataset.samples:
        name = str(Path(path).relative_to(root))
        # torchvision follows symbolic links, loops included: each file counts once.
        first = first_name.setdefault(os.path.realpath(path), name)
        load = partial(decode_image, Path(path), draft_size=params.image_size) if first == name else \
            partial(_same_file, first)
        items.append(SourceItem(name, label, load))
    return RawDataset(list(dataset.classes), items)


def _load_tensor(path: Path) -> torch.Tensor:
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ImageDecodeError("file listed in the label CSV does not exist") from None
    except Exception as error:  # torch raises many types; its messages run to many lines
        raise ImageDecodeError(f"not a readable tensor file: {load_failure(error)}") from None
    if not isinstance(tensor, torch.Tensor):
        raise ImageDecodeError(f"file holds a {type(tensor).__name__}, not a tensor")
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dtype.is_floating_point:
        if not torch.isfinite(tensor).all() or tensor.min() < -1e-3 or tensor.max() > 1 + 1e-3:
            raise ImageDecodeError("float tensor values must lie in [0, 1]")
    elif tensor.dtype != torch.uint8:
        raise ImageDecodeError(f"unsupported tensor dtype {tensor.dtype}")
    return tensor


def read_tensors(params: DataParams) -> RawDataset:
    root = Path(params.path)
    csv_path = root / params.labels_csv
    if not csv_path.is_file():
        raise SourceError(f"label CSV not found: {csv_path} (expected columns 'file,label')")
    try:  # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would hide 'file'
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows, header = list(reader), reader.fieldnames or []
    except UnicodeDecodeError as error:
        raise SourceError(f"{csv_path} is not UTF-8 text ({error.reason} at byte {error.start}): save it "
                          f"as UTF-8") from None
    if not rows or not {"file", "label"} <= set(rows[0]):
        found = (f"its header is {header}" + ("" if rows else ", and no rows")) if header else "it is empty"
        raise SourceError(f"{csv_path} must have a header with the columns 'file' and 'label', comma "
                          f"separated, and at least one row ({found})")
    incomplete = [line for line, row in enumerate(rows, start=2)
                  if not (row["file"] or "").strip() or not (row["label"] or "").strip()]
    if incomplete:  # a short row holds None, which would crash below
        raise SourceError(f"{csv_path}: no file or no label on line(s) {incomplete[:10]}")
    entries = [(row["file"].strip(), row["label"].strip()) for row in rows]  # file, label: line 2 on
    lines: dict[str, list[int]] = {}
    for line, (file, _) in enumerate(entries, start=2):
        lines.setdefault(file, []).append(line)
    repeated = {file: at for file, at in lines.items() if len(at) > 1}
    if repeated:  # loaded twice, or once under each of two labels
        file, at = next(iter(repeated.items()))
        raise SourceError(f"{csv_path}: {len(repeated)} file(s) listed more than once, such as {file} on "
                          f"lines {at}: list each file once, with its one label")
    inside = root.resolve()
    outside = [line for line, (file, _) in enumerate(entries, start=2)
               if not (root / file).resolve().is_relative_to(inside)]
    if outside:
        raise SourceError(f"{csv_path}: the files on line(s) {outside[:10]} are outside {root}: list "
                          f"files by their path relative to data.path")
    unlisted = sorted(path.name for path in root.glob("*.pt") if path.name not in lines)
    if unlisted:
        print(f"note: {len(unlisted)} .pt file(s) in {root} are not in {csv_path.name}, so not used: "
              f"{_first_few(unlisted)}")
    labels = sorted({label for _, label in entries},
                    key=lambda x: (0, int(x), "") if x.lstrip("-").isdigit() else (1, 0, x))
    index = {name: i for i, name in enumerate(labels)}
    items = [SourceItem(file, index[label], partial(_load_tensor, root / file)) for file, label in entries]
    return RawDataset(labels, items)


def _first_few(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` names, comma separated, with ', ...' where there are more."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def read_source(params: DataParams, seed: int) -> RawDataset:
    """The items of the configured ``data.source``."""
    if params.source == Source.synthetic:
        return read_synthetic(params, seed)
    readers = {Source.flowers102: read_flowers102, Source.imagefolder: read_imagefolder,
               Source.tensors: read_tensors}
    return readers[params.source](params)
