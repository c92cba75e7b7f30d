"""Decode and resize of camera-sized JPEGs: full decode against Pillow's DCT-domain draft.

    python -m benchmarks.decode_speed [--sizes 128 224] [--calls 15]

For each photo size (500x375 up to 4000x3000: serve_load's photo, quality 90) and each model size,
it prints the median milliseconds of ``square_resize(decode_image(...))`` without and with
``draft_size``, as the service and prepare decode, and their ratio, in one run.
"""

from __future__ import annotations

import argparse
from functools import partial

from benchmarks.serve_load import median_seconds, photo_jpeg
from flowerlab.hardware import cpu_model
from flowerlab.imaging import decode_image, square_resize

PHOTOS = ((500, 375), (1000, 750), (2000, 1500), (4000, 3000))


def decode_and_resize(data: bytes, size: int, draft_size: int | None) -> None:
    square_resize(decode_image(data, draft_size=draft_size), size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args()
    print(f"{cpu_model()}; median of {args.calls} calls")
    print(f"{'photo':>10s} {'size':>4s} {'full ms':>8s} {'draft ms':>8s} {'ratio':>6s}")
    for width, height in PHOTOS:
        data = photo_jpeg((width, height))
        for size in args.sizes:
            full, draft = (1000 * median_seconds(partial(decode_and_resize, data, size, draft_size),
                                                 args.calls) for draft_size in (None, size))
            print(f"{width:>4d}x{height:<5d} {size:4d} {full:8.2f} {draft:8.2f} {full / draft:6.2f}")

if __name__ == "__main__":
    main()
