"""Decode and resize of camera-sized JPEGs: full decode against Pillow's DCT-domain draft; and
the costliest upload the service accepts, a 16-bit PNG just under its 40-MP limit.

    python -m benchmarks.decode_speed [--sizes 128 224] [--calls 15] [--deep]

For each photo size (500x375 up to 4000x3000: serve_load's photo, quality 90) and each model size,
it prints the median milliseconds of ``square_resize(decode_image(...))`` without and with
``draft_size``, as the service and prepare decode, and their ratio, in one run. With ``--deep`` it
also decodes and resizes a 6300x6300 16-bit greyscale PNG, 5 times in a fresh process, and prints
the median time and the peak memory (``VmHWM``) above that process's before the first decode.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.serve_load import median_seconds, photo_jpeg
from flowerlab.hardware import cpu_model
from flowerlab.imaging import decode_image, square_resize

PHOTOS = ((500, 375), (1000, 750), (2000, 1500), (4000, 3000))
DEEP_SIDE = 6300  # 39.7 MP, under the service's FLOWERLAB_MAX_PIXELS (40 MP)
# Run in a fresh process, so that its peak memory is the decodes' own.
DEEP_DECODES = """
import re, statistics, sys, time
from flowerlab.imaging import decode_image, square_resize
def peak_kib():  # this process's own high-water mark; ru_maxrss would include the parent's at fork
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
data, size = open(sys.argv[1], "rb").read(), int(sys.argv[2])
before = peak_kib()
times = []
for _ in range(5):
    start = time.perf_counter()
    square_resize(decode_image(data, max_pixels=40_000_000), size)
    times.append(time.perf_counter() - start)
print(statistics.median(times), (peak_kib() - before) / 1024)
"""


def decode_and_resize(data: bytes, size: int, draft_size: int | None) -> None:
    square_resize(decode_image(data, draft_size=draft_size), size)


def deep_png(side: int = DEEP_SIDE) -> bytes:
    """A 16-bit greyscale PNG of ``side`` x ``side``: a diagonal ramp over all 65,536 levels."""
    rows, columns = np.arange(side, dtype=np.uint32) * 3, np.arange(side, dtype=np.uint32) * 7
    buffer = io.BytesIO()
    Image.fromarray((np.add.outer(rows, columns) % 65536).astype(np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()


def deep_png_cost(size: int, side: int = DEEP_SIDE) -> tuple[float, float]:
    """Median seconds of decoding and resizing :func:`deep_png` to ``size``, and the peak MB above
    the process, measured in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "deep.png"
        path.write_bytes(deep_png(side))
        out = subprocess.run([sys.executable, "-c", DEEP_DECODES, str(path), str(size)], check=True,
                             capture_output=True, text=True, cwd=Path(__file__).parents[1]).stdout
    seconds, megabytes = out.split()
    return float(seconds), float(megabytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--deep", action="store_true",
                        help=f"also a {DEEP_SIDE}x{DEEP_SIDE} 16-bit PNG: time and peak memory")
    args = parser.parse_args()
    print(f"{cpu_model()}; median of {args.calls} calls")
    print(f"{'photo':>10s} {'size':>4s} {'full ms':>8s} {'draft ms':>8s} {'ratio':>6s}")
    for width, height in PHOTOS:
        data = photo_jpeg((width, height))
        for size in args.sizes:
            full, draft = (1000 * median_seconds(partial(decode_and_resize, data, size, draft_size),
                                                 args.calls) for draft_size in (None, size))
            print(f"{width:>4d}x{height:<5d} {size:4d} {full:8.2f} {draft:8.2f} {full / draft:6.2f}")
    if args.deep:
        for size in args.sizes:
            seconds, megabytes = deep_png_cost(size)
            print(f"16-bit PNG {DEEP_SIDE}x{DEEP_SIDE} to {size} px: {1000 * seconds:.0f} ms, "
                  f"peak memory +{megabytes:.0f} MB")

if __name__ == "__main__":
    main()
