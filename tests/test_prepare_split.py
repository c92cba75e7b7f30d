"""prepare and split: the uint8 store, the stratified split, and the real stage scripts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flowerlab.cli import run_stage
from flowerlab.config import DataParams, Source
from flowerlab.data.preparation import prepare_images
from flowerlab.data.sources import RawDataset, read_source
from flowerlab.data.split import split_indices
from flowerlab.data.store import PreparedData, load_prepared, save_prepared
from stages import prepare as prepare_stage
from stages import split as split_stage
from tests.datasets import file_hashes, make_imagefolder, run_stages, stage_env, write_params

TINY_SYNTHETIC = {"data.source": "synthetic", "data.samples_per_class": 3, "data.image_size": 16}
TINY_IMAGEFOLDER = {"data.source": "imagefolder", "data.path": "raw", "data.image_size": 16}
STORE_FILES = {"images.npy", "labels.npy", "meta.json", "report.json"}


def _synthetic_raw(classes: int, per_class: int, seed: int = 0) -> RawDataset:
    raw = read_source(DataParams(source=Source.synthetic, image_size=16, samples_per_class=per_class),
                      seed)
    return RawDataset(raw.classes, [item for item in raw.items if item.label < classes])


def _split_json(folder: Path) -> dict[str, list[int]]:
    return json.loads((folder / "data/split/split.json").read_text())


def _check_partition(split: dict[str, list[int]], n: int) -> None:
    assert set(split) == {"train", "val", "test"}
    everything = [i for indices in split.values() for i in indices]
    assert sorted(everything) == list(range(n))  # disjoint and covering


# --- the store --------------------------------------------------------------------------------


def test_prepare_images_shapes_dtypes_and_labels():
    raw = _synthetic_raw(classes=4, per_class=3)
    data, skipped = prepare_images(raw, 24, "synthetic", progress=False)
    assert skipped == []
    assert data.images.shape == (12, 24, 24, 3) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(data.classes) == 102 and data.image_size == 24 and data.source == "synthetic"
    assert data.official_split is None
    assert data.images.std() > 10  # real pictures, not an empty buffer
    images, labels = data.tensors([0, 5])
    assert tuple(images.shape) == (2, 3, 24, 24) and labels.tolist() == [0, 1]
    assert np.array_equal(images[1].permute(1, 2, 0).numpy(), data.images[5])


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = PreparedData(rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8),
                        np.array([2, 0, 1, 2, 0], dtype=np.int64), ["a", "b", "c"], 16, "flowers102",
                        {"train": [0, 1], "val": [2], "test": [3, 4]})
    skipped = [{"file": "x.jpg", "reason": "not a recognised image format"}]
    save_prepared(data, skipped, tmp_path / "prepared")
    assert {p.name for p in (tmp_path / "prepared").iterdir()} == STORE_FILES

    loaded = load_prepared(tmp_path / "prepared")
    assert loaded.images.dtype == np.uint8 and loaded.labels.dtype == np.int64
    assert np.array_equal(loaded.images, data.images)
    assert np.array_equal(loaded.labels, data.labels)
    assert (loaded.classes, loaded.image_size, loaded.source, loaded.official_split) == (
        data.classes, data.image_size, data.source, data.official_split)
    report = json.loads((tmp_path / "prepared/report.json").read_text())
    assert report == {"skipped": skipped}


def test_load_prepared_without_store_says_run_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the prepare stage"):
        load_prepared(tmp_path)


@pytest.mark.parametrize("overrides", [TINY_SYNTHETIC, TINY_IMAGEFOLDER], ids=["synthetic", "imagefolder"])
def test_prepare_twice_gives_identical_files(tmp_path, monkeypatch, overrides):
    hashes = []
    for run in ("first", "second"):
        folder = tmp_path / run
        write_params(folder, overrides)
        make_imagefolder(folder / "raw")
        monkeypatch.chdir(folder)
        prepare_stage.main()
        hashes.append({k: v for k, v in file_hashes(folder).items() if not k.startswith("raw/")})
    assert hashes[0] == hashes[1]
    assert {k for k in hashes[0] if k.startswith("data/prepared/")} == {
        f"data/prepared/{name}" for name in STORE_FILES}
    assert "metrics/prepare.json" in hashes[0]


# --- split_indices ----------------------------------------------------------------------------


def _labels_with_counts(counts: list[int], seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize(("val", "test"), [(0.1, 0.15), (0.2, 0.3), (0.05, 0.05)])
def test_split_is_stratified(val, test):
    counts = [1, 2, 3, 5, 10, 21, 40, 97]
    labels = _labels_with_counts(counts)
    split = split_indices(labels, val, test, seed=0)
    _check_partition(split, len(labels))
    for label, n in enumerate(counts):
        # Documented floor: a class of three or more images has at least one in val and test.
        expected_val, expected_test = (max(n * f, 1) if n >= 3 else n * f for f in (val, test))
        expected = {"train": n - expected_val - expected_test, "val": expected_val,
                    "test": expected_test}
        for name in ("train", "val", "test"):
            share = int((labels[split[name]] == label).sum())
            assert abs(share - expected[name]) <= 1, (label, name, share, expected[name])
            if n >= 3:
                assert share >= 1, (label, name)


def test_split_is_seeded():
    labels = _labels_with_counts([20, 30, 25, 40])
    first = split_indices(labels, 0.15, 0.15, seed=1)
    assert split_indices(labels, 0.15, 0.15, seed=1) == first
    other = split_indices(labels, 0.15, 0.15, seed=2)
    assert other != first
    assert all(len(other[name]) == len(first[name]) for name in first)  # same sizes, other members
    assert all(indices == sorted(indices) for indices in first.values())


# --- the split stage --------------------------------------------------------------------------


def _store_with_official_split(folder: Path) -> PreparedData:
    labels = np.repeat(np.arange(3), 10)
    official = {"train": list(range(0, 30, 3)), "val": list(range(1, 30, 3)),
                "test": list(range(2, 30, 3))}
    data = PreparedData(np.zeros((30, 16, 16, 3), np.uint8), labels, ["a", "b", "c"], 16,
                        "flowers102", official)
    save_prepared(data, [], folder / "data/prepared")
    return data


@pytest.mark.parametrize("use_official", [True, False])
def test_split_stage_uses_the_official_split_when_asked(tmp_path, monkeypatch, use_official):
    data = _store_with_official_split(tmp_path)
    write_params(tmp_path, {"split.use_official": use_official})
    monkeypatch.chdir(tmp_path)
    split_stage.main()
    split = _split_json(tmp_path)
    _check_partition(split, 30)
    if use_official:
        assert split == data.official_split
    else:
        assert split != data.official_split
        assert split == split_indices(data.labels, 0.1, 0.15, seed=42)


def test_split_stage_without_official_split_is_stratified(tmp_path, monkeypatch):
    data = _store_with_official_split(tmp_path)
    data.official_split = None
    save_prepared(data, [], tmp_path / "data/prepared")
    write_params(tmp_path, {"split.use_official": True, "seed": 7})
    monkeypatch.chdir(tmp_path)
    split_stage.main()
    assert _split_json(tmp_path) == split_indices(data.labels, 0.1, 0.15, seed=7)


# --- failures become one line and exit code 1 ---------------------------------------------------


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"data.source": "imagefolder", "data.path": "nowhere"}, "image folder not found"),
    ({"data.source": "imagefolder", "data.path": "raw", "data.image_size": 16}, "no readable images"),
])
def test_prepare_stage_failures_are_one_line(tmp_path, monkeypatch, capsys, overrides, expected):
    (tmp_path / "raw/daisy").mkdir(parents=True)
    (tmp_path / "raw/daisy/notes.txt").write_text("not an image")
    write_params(tmp_path, overrides)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:
        run_stage("prepare", prepare_stage.main)
    assert caught.value.code == 1
    out, err = capsys.readouterr()
    err = err.strip().splitlines()[-1]  # after the progress bar, if any
    assert err.startswith("prepare: error: ") and expected in err
    assert not (tmp_path / "data").exists()  # nothing written: a store stays as it was
    if "reasons above" in err:  # printed before it
        assert "  skipped daisy/notes.txt: not a recognised image format" in out


# --- the real stage scripts, end to end ---------------------------------------------------------


@pytest.mark.slow
def test_stage_scripts_synthetic_end_to_end(tmp_path):
    write_params(tmp_path, TINY_SYNTHETIC)
    result = run_stages(tmp_path, "prepare", "split")
    assert result.returncode == 0, result.stderr
    assert "prepared 306 images of 102 classes, skipped 0" in result.stdout
    assert "stratified split: train=102, val=102, test=102" in result.stdout
    data = load_prepared(tmp_path / "data/prepared")
    assert data.images.shape == (306, 16, 16, 3) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [3] * 102
    assert json.loads((tmp_path / "metrics/prepare.json").read_text()) == {
        "images": 306, "skipped": 0, "classes": 102}
    indices = _split_json(tmp_path)
    _check_partition(indices, 306)
    for name in ("train", "val", "test"):  # three per class: one in each split
        assert np.bincount(data.labels[indices[name]], minlength=102).tolist() == [1] * 102


@pytest.mark.slow
def test_stage_scripts_imagefolder_end_to_end(tmp_path):
    fixture = make_imagefolder(tmp_path / "raw")
    write_params(tmp_path, TINY_IMAGEFOLDER)
    result = run_stages(tmp_path, "prepare", "split")
    assert result.returncode == 0, result.stderr
    assert "prepared 9 images of 3 classes, skipped 4 unreadable files" in result.stdout
    for name in fixture.bad:
        assert f"skipped {name}: " in result.stdout
    assert json.loads((tmp_path / "metrics/prepare.json").read_text()) == {
        "images": 9, "skipped": 4, "classes": 3}
    report = json.loads((tmp_path / "data/prepared/report.json").read_text())
    assert {entry["file"]: entry["reason"] != "" for entry in report["skipped"]} == {
        name: True for name in fixture.bad}
    data = load_prepared(tmp_path / "data/prepared")
    assert data.classes == fixture.classes
    assert data.labels.tolist() == sorted(fixture.good.values())
    indices = _split_json(tmp_path)
    _check_partition(indices, 9)
    assert [sorted(data.labels[indices[name]].tolist()) for name in ("train", "val", "test")] == [
        [0, 1, 2]] * 3


@pytest.mark.slow
def test_stage_script_bad_params_exit_1_with_one_line(tmp_path, monkeypatch):
    write_params(tmp_path, {**TINY_SYNTHETIC, "data.sourse": "synthetic"})
    result = run_stages(tmp_path, "prepare")  # python -m stages.prepare
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("prepare: error: ") and "'data.sourse'" in lines[0]
    assert "DVC removed" not in lines[0]
    assert not (tmp_path / "data").exists()
    # Under DVC (which sets DVC_STAGE) the stage's old outputs are gone by then: the line says how
    # to get them back.
    monkeypatch.setenv("DVC_STAGE", "prepare")
    [line] = run_stages(tmp_path, "prepare").stderr.strip().splitlines()
    assert line.startswith("prepare: error: ") and line.endswith(
        "(DVC removed this stage's previous outputs before running it; `dvc checkout` restores the ones "
        "dvc.lock records, from the cache)")


@pytest.mark.slow
def test_stage_scripts_take_help_and_refuse_arguments_before_touching_files(tmp_path):
    """``python -m stages.train --help`` describes the stage and exits; it used to start training,
    which first clears the checkpoint folder."""
    checkpoint = tmp_path / "models/checkpoints/classifier/last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"a stopped run's state")
    for args, code, expected in ((["--help"], 0, "usage: python -m stages.train"),
                                 (["--epochs", "3"], 2, "unrecognized arguments: --epochs 3")):
        result = subprocess.run([sys.executable, "-m", "stages.train", *args], cwd=tmp_path, env=stage_env(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == code and expected in result.stdout + result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        if code == 0:
            assert "fine-tune ResNet18 with Lightning" in result.stdout  # the stage's docstring
    assert checkpoint.read_bytes() == b"a stopped run's state"


@pytest.mark.slow
def test_a_bad_training_setting_leaves_the_last_runs_checkpoints(tmp_path):
    """The train stage cleared the checkpoint folder before building its Trainer, so a mistyped
    strategy cost a stopped run its last.ckpt; it now clears it only just before training."""
    write_params(tmp_path, {**TINY_SYNTHETIC, "train.strategy": "ddpp"})
    assert run_stages(tmp_path, "prepare", "split").returncode == 0
    checkpoint = tmp_path / "models/checkpoints/classifier/last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"a stopped run's state")
    result = run_stages(tmp_path, "train")
    assert result.returncode == 1, result.stderr
    assert "train: error: params: train.accelerator=" in result.stderr
    assert "invalid strategy name" in result.stderr and "Traceback" not in result.stderr
    assert checkpoint.read_bytes() == b"a stopped run's state"


@pytest.mark.slow
def test_ctrl_c_in_prepare_is_one_line(tmp_path):
    """SIGINT while the decoding workers run: the stage says it was interrupted and exits 130, where
    it printed a 40-line KeyboardInterrupt traceback."""
    write_params(tmp_path, {"data.source": "synthetic", "data.samples_per_class": 80, "data.image_size": 96})
    # As from a terminal: a shell starts background jobs (`cmd &`, as CI may run the tests) with SIGINT
    # ignored, which children inherit, and Python then installs no KeyboardInterrupt handler.
    process = subprocess.Popen([sys.executable, "-m", "stages.prepare"], cwd=tmp_path, text=True,
                               env=stage_env(), stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    while "img/s" not in seen and process.poll() is None:  # decoding, in the workers, has begun
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130, seen + rest
    assert "prepare: interrupted" in rest and "Traceback" not in rest, rest
    assert not (tmp_path / "data/prepared/images.npy").exists()


def test_parallel_decoding_gives_the_same_store(tmp_path) -> None:
    """Worker processes change only the speed of prepare, never its output."""
    from flowerlab.config import DataParams
    from flowerlab.data.sources import read_synthetic

    raw = read_synthetic(DataParams(image_size=16, samples_per_class=1), seed=3)
    serial, _ = prepare_images(raw, 16, "synthetic", progress=False, workers=0)
    parallel, _ = prepare_images(raw, 16, "synthetic", progress=False, workers=2)
    assert parallel.images.shape == (102, 16, 16, 3)
    assert np.array_equal(serial.images, parallel.images)
    assert np.array_equal(serial.labels, parallel.labels)
