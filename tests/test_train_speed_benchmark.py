"""benchmarks/train_speed.py runs and prints each config of its table."""

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
