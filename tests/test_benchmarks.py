"""The benchmarks without servers run and print every row of their tables (figures: README)."""

from __future__ import annotations

import subprocess
import sys

import torch


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


def test_decode_speed_prints_full_and_drafted_decodes() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.decode_speed", "--sizes", "64", "--calls", "1"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [words for words in map(str.split, out.splitlines()) if words and "x" in words[0]
            and words[0][0].isdigit()]
    assert [row[0] for row in rows] == ["500x375", "1000x750", "2000x1500", "4000x3000"], out
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows), out
