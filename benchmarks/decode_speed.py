"""Decode and resize of camera-sized JPEGs: full decode against Pillow's DCT-domain draft.

    python -m benchmarks.decode_speed [--sizes 128 224] [--calls 15]

For each photo size (500x375 up to 4000x3000, quality 90, a gradient with stripes and noise: more
detail than most photos, so entropy decoding weighs more than it would for a real one) and each
model size, it prints the median milliseconds of ``square_resize(decode_image(...))`` without and
with ``draft_size``, as the service and prepare decode, and their ratio, in one run.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image

from flowerlab.hardware import cpu_model
from flowerlab.imaging import decode_image, square_resize

PHOTOS = ((500, 375), (1000, 750), (2000, 1500), (4000, 3000))


def photo_jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, ((x // 7 + y // 5) % 2) * 200], axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def median_ms(data: bytes, size: int, draft: bool, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        square_resize(decode_image(data, draft_size=size if draft else None), size)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args()
    print(f"{cpu_model()}; median of {args.calls} calls")
    print(f"{'photo':>10s} {'size':>4s} {'full ms':>8s} {'draft ms':>8s} {'ratio':>6s}")
    for width, height in PHOTOS:
        data = photo_jpeg(width, height)
        for size in args.sizes:
            full, draft = (median_ms(data, size, drafted, args.calls) for drafted in (False, True))
            print(f"{width:>4d}x{height:<5d} {size:4d} {full:8.2f} {draft:8.2f} {full / draft:6.2f}")


if __name__ == "__main__":
    main()
