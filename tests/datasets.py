"""Builders for the small on-disk datasets and params files that the data tests read."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from scipy.io import savemat

REPO = Path(__file__).resolve().parents[1]

# One pure colour per class, so a kept image's pixels tell which class folder it came from.
CLASS_COLOURS = {"daisy": (220, 30, 30), "rose": (30, 220, 30), "tulip": (30, 30, 220)}


def write_params(folder: Path, overrides: dict | None = None) -> Path:
    """``folder/params.yaml``: the repo's params with dotted keys set (new keys are added)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in (overrides or {}).items():
        *parents, key = dotted.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value
    path = Path(folder) / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# The tiny configuration the end-to-end runs use (tests/test_pipeline_e2e.py, scripts/docker_smoke.sh).
TINY_PIPELINE = {"epochs": 1, "batch_size": 32, "data.image_size": 16, "data.samples_per_class": 4,
                 "evaluate.misclassified_images": 2, "vae.image_size": 16, "vae.epochs": 1,
                 "vae.batch_size": 32, "vae.width": 8, "vae.latent_dim": 4}


def set_params(path: Path, values: dict) -> None:
    """Set dotted keys in an existing params file; every key must already be there."""
    params = yaml.safe_load(path.read_text())
    for dotted, value in values.items():
        *parents, key = dotted.split(".")
        node = params
        for part in parents:
            node = node[part]
        assert key in node, f"params.yaml has no key {dotted}"
        node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def param_leaves(tree: dict, prefix: str = ""):
    """``(dotted key, value)`` for every leaf of a nested params dict."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from param_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, keyed by its relative path."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def stage_env(**extra: str) -> dict[str, str]:
    """The environment to run ``python -m stages.<name>`` in from a test's folder: this one, with
    the repository importable, plus ``extra``."""
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def run_stages(cwd: Path, *stages: str) -> subprocess.CompletedProcess:
    """Run ``stages`` in one fresh interpreter in ``cwd`` (which holds params.yaml).

    One stage runs as ``python -m stages.<name>``. Several run one after the other through
    ``runpy.run_module(..., run_name="__main__")``, which is what ``-m`` does, so a chain
    pays for importing torch once; a stage that exits stops the chain with its exit code.
    """
    if len(stages) == 1:
        args = ["-m", f"stages.{stages[0]}"]
    else:
        args = ["-c", "import runpy, sys\nfor name in sys.argv[1:]:\n"
                "    sys.argv[:] = [name]  # the stage's own command line: no arguments\n"
                "    runpy.run_module(f'stages.{name}', run_name='__main__', alter_sys=True)",
                *stages]
    return subprocess.run([sys.executable, *args], cwd=cwd, env=stage_env(), capture_output=True,
                          text=True, timeout=300)


def _noise_jpeg_bytes(size: int = 64) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class ImageFolderFixture:
    root: Path
    classes: list[str]
    good: dict[str, int]  # relative path -> label
    bad: dict[str, str]  # relative path -> fragment of the expected skip reason


def make_imagefolder(root: Path) -> ImageFolderFixture:
    """Three class folders of three solid-colour images each (PNG and JPEG, not square) and
    four unreadable files: a text file, a zero-byte JPEG, a truncated JPEG and a 400000x1 line
    (a few hundred bytes, but over 100 megapixels once resized to 16 px on its shorter side)."""
    root = Path(root)
    classes = sorted(CLASS_COLOURS)
    good: dict[str, int] = {}
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        pixels = np.empty((20, 28, 3), dtype=np.uint8)
        pixels[:] = CLASS_COLOURS[name]
        for file, size in (("a.png", (28, 20)), ("b.jpg", (17, 23)), ("c.png", (40, 16))):
            Image.fromarray(pixels).resize(size).save(root / name / file, quality=95)
            good[f"{name}/{file}"] = label
    (root / "daisy" / "notes.txt").write_text("photographed in May\n")
    (root / "rose" / "empty.jpg").write_bytes(b"")
    noise = _noise_jpeg_bytes()
    (root / "tulip" / "truncated.jpg").write_bytes(noise[: len(noise) // 2])
    Image.new("RGB", (400_000, 1), CLASS_COLOURS["daisy"]).save(root / "daisy" / "line.png")
    bad = {"daisy/notes.txt": "not a recognised image format",
           "rose/empty.jpg": "not a recognised image format",
           "tulip/truncated.jpg": "truncated",
           "daisy/line.png": "aspect ratio too extreme: 400000x1 resized to"}
    return ImageFolderFixture(root, classes, good, bad)


@dataclass
class TensorFolderFixture:
    root: Path
    classes: list[str]
    good: dict[str, tuple[int, tuple[int, int, int]]]  # file -> (label, expected RGB of every pixel)
    bad: dict[str, str]  # file -> fragment of the expected skip reason
    csv_rows: list[tuple[str, str]] = field(default_factory=list)


def make_tensor_folder(root: Path) -> TensorFolderFixture:
    """``.pt`` files of three layouts (uint8 CHW, float CHW in [0, 1], grayscale HW) with a
    labels.csv, plus a corrupt file, a listed-but-missing file, an out-of-range float tensor and an
    empty one (3, 0, 20)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    uint8 = torch.empty(3, 12, 10, dtype=torch.uint8)
    uint8[0], uint8[1], uint8[2] = 10, 20, 30
    torch.save(uint8, root / "uint8_chw.pt")
    torch.save(torch.full((3, 10, 14), 0.2), root / "float_chw.pt")  # 0.2 * 255 = 51
    torch.save(torch.full((9, 11), 200, dtype=torch.uint8), root / "gray_hw.pt")
    (root / "corrupt.pt").write_bytes(b"this is not a tensor file")
    torch.save(torch.full((3, 8, 8), 2.0), root / "out_of_range.pt")
    torch.save(torch.zeros(3, 0, 20, dtype=torch.uint8), root / "empty.pt")
    rows = [("uint8_chw.pt", "rose"), ("float_chw.pt", "daisy"), ("gray_hw.pt", "tulip"),
            ("corrupt.pt", "rose"), ("missing.pt", "daisy"), ("out_of_range.pt", "tulip"),
            ("empty.pt", "rose")]
    (root / "labels.csv").write_text("file,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows))
    good = {"uint8_chw.pt": (1, (10, 20, 30)), "float_chw.pt": (0, (51, 51, 51)),
            "gray_hw.pt": (2, (200, 200, 200))}
    bad = {"corrupt.pt": "not a readable tensor file", "missing.pt": "does not exist",
           "out_of_range.pt": "[0, 1]", "empty.pt": "empty image: 20x0 pixels"}
    return TensorFolderFixture(root, ["daisy", "rose", "tulip"], good, bad, rows)


@dataclass
class Flowers102Fixture:
    root: Path  # data.path; the files lie in root/flowers-102
    labels: list[int]  # 1-based, as in imagelabels.mat, for image ids 1..N
    setid: dict[str, list[int]]  # trnid / valid / tstid

    @property
    def base(self) -> Path:
        return self.root / "flowers-102"


def grey_of(image_id: int) -> int:
    """The grey level of the fixture image ``image_id``, so a prepared image tells its id."""
    return 20 + 25 * image_id


def make_flowers102(root: Path, missing_images: tuple[int, ...] = ()) -> Flowers102Fixture:
    """A nine-image Flowers102 layout: jpg/image_0000N.jpg, imagelabels.mat, setid.mat."""
    root = Path(root)
    jpg = root / "flowers-102" / "jpg"
    jpg.mkdir(parents=True, exist_ok=True)
    labels = [1, 102, 7, 1, 102, 7, 1, 102, 7]  # 1-based like the real file
    setid = {"trnid": [1, 2, 3], "valid": [4, 5, 6], "tstid": [7, 8, 9]}
    for image_id in range(1, len(labels) + 1):
        if image_id in missing_images:
            continue
        pixels = np.full((24, 30, 3), grey_of(image_id), dtype=np.uint8)
        Image.fromarray(pixels).save(jpg / f"image_{image_id:05d}.jpg", quality=95)
    savemat(root / "flowers-102" / "imagelabels.mat", {"labels": np.array(labels, dtype=np.uint8)})
    savemat(root / "flowers-102" / "setid.mat",
            {key: np.array(ids, dtype=np.uint16) for key, ids in setid.items()})
    return Flowers102Fixture(root, labels, setid)


def patch_flowers102_md5(monkeypatch, fixture: Flowers102Fixture) -> None:
    """torchvision checks the md5 of the two .mat files; accept the fixture's own."""
    from torchvision.datasets import Flowers102

    file_dict = dict(Flowers102._file_dict)
    for key in ("label", "setid"):
        filename, _ = file_dict[key]
        file_dict[key] = (filename, md5(fixture.base / filename))
    monkeypatch.setattr(Flowers102, "_file_dict", file_dict)
