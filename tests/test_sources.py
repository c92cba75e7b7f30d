"""Each data source on a miniature on-disk copy: items, labels, splits, and bad files reported."""

from __future__ import annotations

import re
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.flowers102 as tv_flowers102

from flowerlab.config import DataParams, Source
from flowerlab.data.preparation import prepare_images
from flowerlab.data.sources import FLOWERS102_CLASSES, FLOWERS102_URL, SourceError, read_source
from tests.datasets import (
    CLASS_COLOURS,
    grey_of,
    make_flowers102,
    make_imagefolder,
    make_tensor_folder,
    patch_flowers102_md5,
)

SIZE = 16


def _read(source: Source, path, **extra):
    return read_source(DataParams(source=source, path=str(path), image_size=SIZE, **extra), seed=0)


def _prepare(raw, source: str):
    return prepare_images(raw, SIZE, source, progress=False)


# --- flowers102 -------------------------------------------------------------------------------


def test_flowers102_items_labels_and_official_split(tmp_path, monkeypatch):
    fixture = make_flowers102(tmp_path)
    patch_flowers102_md5(monkeypatch, fixture)
    raw = _read(Source.flowers102, tmp_path, download=False)

    assert raw.classes == list(FLOWERS102_CLASSES)
    assert len(raw.classes) == len(set(raw.classes)) == 102
    assert raw.classes[0] == "pink primrose" and raw.classes[101] == "blackberry lily"
    ids = fixture.setid["trnid"] + fixture.setid["valid"] + fixture.setid["tstid"]
    assert [item.name for item in raw.items] == [f"image_{i:05d}.jpg" for i in ids]
    assert [item.label for item in raw.items] == [fixture.labels[i - 1] - 1 for i in ids]
    assert {item.label for item in raw.items} == {0, 6, 101}  # 1-based 1, 7, 102 in the file
    assert [item.split for item in raw.items] == ["train"] * 3 + ["val"] * 3 + ["test"] * 3
    assert raw.has_official_split

    data, skipped = _prepare(raw, "flowers102")
    assert skipped == []
    assert data.official_split == {"train": [0, 1, 2], "val": [3, 4, 5], "test": [6, 7, 8]}
    assert data.images.shape == (9, SIZE, SIZE, 3)
    for index, image_id in enumerate(ids):  # each stored image is the file its item names
        assert np.abs(data.images[index].astype(int) - grey_of(image_id)).max() <= 3


def test_flowers102_missing_image_is_skipped_and_official_split_reindexed(tmp_path, monkeypatch):
    fixture = make_flowers102(tmp_path, missing_images=(5,))  # 5 is in the val split
    patch_flowers102_md5(monkeypatch, fixture)
    data, skipped = _prepare(_read(Source.flowers102, tmp_path, download=False), "flowers102")
    assert [entry["file"] for entry in skipped] == ["image_00005.jpg"]
    assert data.official_split == {"train": [0, 1, 2], "val": [3, 4], "test": [5, 6, 7]}
    assert data.labels.tolist() == [0, 101, 6, 0, 6, 0, 101, 6]


def test_flowers102_present_files_are_not_downloaded_again(tmp_path, monkeypatch):
    fixture = make_flowers102(tmp_path)
    patch_flowers102_md5(monkeypatch, fixture)

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the files are present")

    monkeypatch.setattr(tv_flowers102, "download_and_extract_archive", no_download)
    monkeypatch.setattr(tv_flowers102, "download_url", no_download)
    assert len(_read(Source.flowers102, tmp_path, download=True).items) == 9


def test_flowers102_missing_files_offline_says_how_to_get_them(tmp_path):
    with pytest.raises(SourceError) as caught:
        _read(Source.flowers102, tmp_path, download=False)
    message = str(caught.value)
    assert FLOWERS102_URL in message
    for name in ("102flowers.tgz", "imagelabels.mat", "setid.mat", "data.download: true"):
        assert name in message
    assert str(tmp_path / "flowers-102") in message
    assert "(missing: jpg/, imagelabels.mat, setid.mat)" in message and "download=True" not in message
    (tmp_path / "flowers-102/jpg").mkdir(parents=True)
    (tmp_path / "flowers-102/setid.mat").write_bytes(b"")
    with pytest.raises(SourceError, match=r"\(missing: imagelabels.mat\)"):
        _read(Source.flowers102, tmp_path, download=False)


def test_flowers102_wrong_md5_is_a_source_error(tmp_path):
    make_flowers102(tmp_path)  # the fixture's .mat files do not match torchvision's md5s
    with pytest.raises(SourceError, match="the files are there but do not match torchvision's checksums"):
        _read(Source.flowers102, tmp_path, download=False)


def test_flowers102_download_without_network_is_a_source_error(tmp_path, monkeypatch):
    calls = []

    def offline(url, root, *args, **kwargs):
        calls.append(url)
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision's do, before they connect
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_flowers102, "download_and_extract_archive", offline)
    monkeypatch.setattr(tv_flowers102, "download_url", offline)
    with pytest.raises(SourceError) as caught:
        _read(Source.flowers102, tmp_path, download=True)
    message = str(caught.value)
    assert calls and calls[0].startswith(FLOWERS102_URL)
    assert "name resolution" in message
    assert "download failed" in message
    assert FLOWERS102_URL in message
    assert "\n" not in message
    # No empty flowers-102/ left behind: under data/raw it would later read as a class folder.
    assert list(tmp_path.iterdir()) == []


# --- imagefolder ------------------------------------------------------------------------------


def test_imagefolder_keeps_good_images_and_reports_bad_files(tmp_path):
    fixture = make_imagefolder(tmp_path / "raw")
    raw = _read(Source.imagefolder, fixture.root)
    assert raw.classes == fixture.classes == ["daisy", "rose", "tulip"]
    assert not raw.has_official_split
    assert len(raw.items) == len(fixture.good) + len(fixture.bad)

    data, skipped = _prepare(raw, "imagefolder")
    reasons = {entry["file"]: entry["reason"] for entry in skipped}
    assert set(reasons) == set(fixture.bad)
    for name, fragment in fixture.bad.items():
        assert fragment in reasons[name], (name, reasons[name])

    kept = [item for item in raw.items if item.name in fixture.good]
    assert data.images.shape == (len(fixture.good), SIZE, SIZE, 3)
    assert data.labels.tolist() == [fixture.good[item.name] for item in kept]
    for image, label in zip(data.images, data.labels):  # the pixels agree with the label
        colour = np.array(CLASS_COLOURS[fixture.classes[label]])
        assert np.abs(image.reshape(-1, 3).mean(axis=0) - colour).max() < 6


def test_imagefolder_missing_folder_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="image folder not found"):
        _read(Source.imagefolder, tmp_path / "nowhere")


def test_imagefolder_without_class_folders_is_a_source_error(tmp_path):
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(SourceError, match="cannot read image folder"):
        _read(Source.imagefolder, tmp_path)


# --- tensors ----------------------------------------------------------------------------------


def test_tensors_layouts_are_converted_and_bad_files_reported(tmp_path):
    fixture = make_tensor_folder(tmp_path)
    raw = _read(Source.tensors, tmp_path)
    assert raw.classes == fixture.classes
    assert [item.name for item in raw.items] == [file for file, _ in fixture.csv_rows]

    data, skipped = _prepare(raw, "tensors")
    reasons = {entry["file"]: entry["reason"] for entry in skipped}
    assert set(reasons) == set(fixture.bad)
    for name, fragment in fixture.bad.items():
        assert fragment in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name]

    assert data.images.shape == (3, SIZE, SIZE, 3) and data.images.dtype == np.uint8
    for index, (file, (label, rgb)) in enumerate(fixture.good.items()):
        assert data.labels[index] == label, file
        assert (data.images[index] == np.array(rgb, dtype=np.uint8)).all(), file


def test_tensors_numeric_labels_sort_by_value(tmp_path):
    make_tensor_folder(tmp_path)
    (tmp_path / "labels.csv").write_text(
        "file,label\nuint8_chw.pt,10\nfloat_chw.pt, 2\ngray_hw.pt,0\n")
    raw = _read(Source.tensors, tmp_path)
    assert raw.classes == ["0", "2", "10"]
    assert [item.label for item in raw.items] == [2, 1, 0]


def test_tensors_custom_csv_name(tmp_path):
    make_tensor_folder(tmp_path)
    (tmp_path / "labels.csv").rename(tmp_path / "classes.csv")
    assert len(_read(Source.tensors, tmp_path, labels_csv="classes.csv").items) == 7


def test_tensors_missing_csv_is_a_source_error(tmp_path):
    make_tensor_folder(tmp_path)
    (tmp_path / "labels.csv").unlink()
    with pytest.raises(SourceError, match="label CSV not found"):
        _read(Source.tensors, tmp_path)


@pytest.mark.parametrize(("text", "found"), [
    ("uint8_chw.pt,rose\ngray_hw.pt,tulip\n", "its header is ['uint8_chw.pt', 'rose']"),  # no header
    ("path,class\nuint8_chw.pt,rose\n", "its header is ['path', 'class']"),
    ("file;label\nuint8_chw.pt;rose\n", "its header is ['file;label']"),  # another separator
    ("file,label\n", "its header is ['file', 'label'], and no rows"),
    ("", "it is empty"),
])
def test_tensors_csv_without_the_right_header_is_a_source_error(tmp_path, text, found):
    make_tensor_folder(tmp_path)
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(SourceError, match="'file' and 'label'") as caught:
        _read(Source.tensors, tmp_path)
    assert f"({found})" in str(caught.value)


def test_tensors_csv_as_excel_saves_it_and_not_utf8(tmp_path):
    """Excel's "CSV UTF-8" begins with a byte-order mark: read as usual. Latin-1: one line saying so."""
    make_tensor_folder(tmp_path)
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbffile,label\r\nuint8_chw.pt,rose\r\n")
    items = _read(Source.tensors, tmp_path).items
    assert [(item.name, item.label) for item in items] == [("uint8_chw.pt", 0)]
    (tmp_path / "labels.csv").write_bytes("file,label\nuint8_chw.pt,rosé\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"labels.csv is not UTF-8 text \(invalid continuation byte at "
                                          r"byte 27\): save it as UTF-8"):
        _read(Source.tensors, tmp_path)


def test_imagefolder_hidden_folders_and_symlinks(tmp_path):
    """Hidden folders (a notebook's checkpoints) are no class and hold no images; a file reached
    again through a symbolic link (a loop included) is used once and reported."""
    fixture = make_imagefolder(tmp_path / "raw")
    root = fixture.root
    (root / ".ipynb_checkpoints").mkdir()
    (root / "daisy/a.png").rename(root / ".ipynb_checkpoints/a.png")
    (root / "rose/.thumbnails").mkdir()
    (root / "rose/b.jpg").rename(root / "rose/.thumbnails/b.jpg")
    (root / "tulip/again").symlink_to(root / "tulip")  # a loop: torchvision follows it 40 deep
    raw = _read(Source.imagefolder, root)
    assert raw.classes == ["daisy", "rose", "tulip"]
    names = [item.name for item in raw.items]
    assert "daisy/a.png" not in names and not any(".thumbnails" in name for name in names)
    data, skipped = _prepare(raw, "imagefolder")
    reasons = {entry["file"]: entry["reason"] for entry in skipped}
    assert reasons["tulip/again/a.png"] == ("the same file as tulip/a.png, reached again through a "
                                            "symbolic link: used once")
    assert np.bincount(data.labels).tolist() == [2, 2, 3]  # each tulip file once


def test_imagefolder_path_that_is_a_file_is_a_source_error(tmp_path):
    (tmp_path / "photos.zip").write_bytes(b"PK")
    with pytest.raises(SourceError, match=r"photos.zip is a file: set it to a folder with one subfolder "
                                          r"per class"):
        _read(Source.imagefolder, tmp_path / "photos.zip")


@pytest.mark.parametrize(("change", "message"), [
    ("all_bad", "1 class(es) kept no readable image, all their files skipped (7 in all, the reasons "
                "above): 'rose'. Add images to them or remove them"),
    ("linked_class", "the reasons above): 'tulip_link'"),
    ("one_class", "only one class ('daisy') in the imagefolder source: a classifier needs at least two"),
])
def test_prepared_classes_must_each_keep_an_image(tmp_path, change, message):
    """A class whose files were all unreadable stayed in the model (served, never trained); one class
    failed later, in training, with torchmetrics' wording."""
    from flowerlab.data.preparation import require_classes

    fixture = make_imagefolder(tmp_path / "raw")
    root = fixture.root
    if change == "all_bad":
        for file in ("a.png", "b.jpg", "c.png"):
            (root / "rose" / file).write_bytes(b"not an image")
    elif change == "linked_class":
        (root / "tulip_link").symlink_to(root / "tulip")
    else:
        for name in ("rose", "tulip"):
            shutil.rmtree(root / name)
    data, skipped = _prepare(_read(Source.imagefolder, root), "imagefolder")
    with pytest.raises(SourceError) as caught:
        require_classes(data, skipped, "imagefolder")
    assert message in str(caught.value)


@pytest.mark.parametrize("row", ["gray_hw.pt", "gray_hw.pt,", ",rose"])
def test_tensors_csv_row_without_file_or_label_is_a_source_error(tmp_path, row):
    make_tensor_folder(tmp_path)
    (tmp_path / "labels.csv").write_text(f"file,label\nuint8_chw.pt,rose\n{row}\n")
    with pytest.raises(SourceError, match=r"line\(s\) \[3\]"):
        _read(Source.tensors, tmp_path)


@pytest.mark.parametrize(("rows", "message"), [
    ("uint8_chw.pt,rose\ngray_hw.pt,tulip\nuint8_chw.pt,rose\n",
     "1 file(s) listed more than once, such as uint8_chw.pt on lines [2, 4]"),
    ("uint8_chw.pt,rose\nuint8_chw.pt,daisy\n", "such as uint8_chw.pt on lines [2, 3]"),  # two labels
    ("uint8_chw.pt,rose\n/etc/hostname,daisy\n../outside.pt,tulip\n",
     "the files on line(s) [3, 4] are outside"),
])
def test_tensors_csv_lists_each_file_once_inside_the_folder(tmp_path, rows, message):
    make_tensor_folder(tmp_path / "data")
    (tmp_path / "data/labels.csv").write_text("file,label\n" + rows)
    with pytest.raises(SourceError, match=re.escape(message)):
        _read(Source.tensors, tmp_path / "data")


def test_files_a_source_does_not_use_are_named(tmp_path, capsys):
    fixture = make_tensor_folder(tmp_path / "tensors")
    torch.save(torch.zeros(3, 4, 4, dtype=torch.uint8), fixture.root / "forgotten.pt")
    _read(Source.tensors, fixture.root)
    assert "note: 1 .pt file(s) in" in capsys.readouterr().out
    folder = make_imagefolder(tmp_path / "raw")
    (folder.root / "stray.jpg").write_bytes(b"")
    (folder.root / "README.md").write_text("where these came from")
    _read(Source.imagefolder, folder.root)
    assert f"note: 1 file(s) directly in {folder.root} belong to no class folder, so not used: stray.jpg" \
        in capsys.readouterr().out
