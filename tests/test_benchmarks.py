"""The benchmarks without servers run and print every row of their tables (figures: README)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch
from PIL import Image

from benchmarks.decode_speed import deep_png, deep_png_cost


def test_train_speed_prints_the_baseline_and_what_auto_picks() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", "--sizes", "16",
                          "--seconds", "0", "--matmul-size", "64"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [words for words in map(str.split, out.splitlines())
            if words[:1] == ["16"] and words[1].isdigit() and "ceiling:" not in words]
    names = [" ".join(row[2:-2]) for row in rows if "data" not in row]
    assert names[0] == "fp32 eager" and names[1].startswith("auto: channels_last 32-true"), out
    speeds = [float(row[-2]) for row in rows if "data" not in row]
    assert all(speed > 0 for speed in speeds) and float(rows[0][-1]) == 1.0, out
    assert "% of an auto step" in out, out
    ceiling = [line for line in out.splitlines() if line.startswith("  16") and "ceiling" in line]
    assert len(ceiling) == 1 and "an fp32 path can be at most" in ceiling[0], out


def test_train_speed_times_a_progressive_run_at_each_size_of_its_schedule(monkeypatch) -> None:
    from benchmarks import train_speed
    from flowerlab.data.transforms import progressive_size

    timed = []

    def fake_speed(images, labels, channels_last, bf16, seconds):  # images/s falling with the pixels
        timed.append((images.shape[-1], channels_last, bf16, len(labels)))
        return 1e6 / images.shape[-1] ** 2

    monkeypatch.setattr(train_speed, "images_per_second", fake_speed)
    full = 1e6 / 128**2
    run = train_speed.progressive_run_speed(128, 8, 20, full, True, True, 0.0)
    schedule = [progressive_size(epoch, 20, 128) for epoch in range(20)]
    assert sorted({size for size, *_ in timed}) == sorted(set(schedule) - {128})  # full size: given
    assert all(rest == [True, True, 8] for _, *rest in timed)  # the full size's config and batch
    assert run == pytest.approx(20 / sum(size**2 / 1e6 for size in schedule))
    assert 1.5 * full < run < 4 * full  # a quarter of the pixels for the first epochs


def test_train_speed_prints_the_progressive_run() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", "--sizes", "64", "--seconds", "0",
                          "--matmul-size", "64", "--progressive", "3"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "progressive 3-epoch run, auto at each size: 32 px" in out and "x 2 epochs, 64 px" in out, out
    [row] = [line.split() for line in out.splitlines() if "auto, progressive 3-epoch run" in line]
    assert float(row[-2]) > 0 and float(row[-1]) > 0, out


def test_a_training_step_counts_forward_and_both_backward_products() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.train_speed import training_step_flops
    from flowerlab.classifier.network import ImageClassifier

    with FlopCounterMode(display=False) as counter:
        ImageClassifier(102)(torch.zeros(2, 3, 32, 32))
    forward = counter.get_total_flops()
    step = training_step_flops(2, 32)
    # backward: the input and the weight gradient, each as costly as the forward product, except
    # the stem's input gradient (the images need none)
    assert 2.5 * forward < step < 3 * forward
    assert training_step_flops(4, 32) == 2 * step


def test_train_speed_times_the_batched_and_the_per_image_augmentation() -> None:
    from benchmarks.train_speed import PerImageAugment, batch_seconds

    assert batch_seconds(64, 4, 0, batches=2) > 0  # 64 px: the strong augmentation
    assert batch_seconds(64, 4, 0, batches=2, augment=PerImageAugment) > 0


def test_deep_png_cost_measures_the_decodes_own_memory() -> None:
    """A 4-MP 16-bit PNG: 16 MB of 32-bit levels while scaling and 12 MB of RGB at least, seen even
    though this (parent) process is far larger: ru_maxrss would have shown the parent's peak."""
    assert Image.open(io.BytesIO(deep_png(64))).mode == "I;16"
    seconds, megabytes = deep_png_cost(32, side=2000)
    assert 0 < seconds < 30
    assert 20 < megabytes < 400


def test_decode_speed_prints_full_and_drafted_decodes() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.decode_speed", "--sizes", "64", "--calls", "1"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [words for words in map(str.split, out.splitlines()) if words and "x" in words[0]
            and words[0][0].isdigit()]
    assert [row[0] for row in rows] == ["500x375", "1000x750", "2000x1500", "4000x3000"], out
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows), out
