"""The benchmarks without servers run and print every row of their tables (figures: README)."""

from __future__ import annotations

import subprocess
import sys


def test_train_speed_prints_the_baseline_and_what_auto_picks() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", "--sizes", "16",
                          "--seconds", "0"], capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [words for words in map(str.split, out.splitlines())
            if words[:1] == ["16"] and words[1].isdigit()]
    names = [" ".join(row[2:-2]) for row in rows if "data" not in row]
    assert names[0] == "fp32 eager" and names[1].startswith("auto: channels_last 32-true"), out
    speeds = [float(row[-2]) for row in rows if "data" not in row]
    assert all(speed > 0 for speed in speeds) and float(rows[0][-1]) == 1.0, out
    assert "% of an auto step" in out, out


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
