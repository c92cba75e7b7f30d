"""Training speed at 32, 128 and 224 px: the plain fp32 eager baseline against what `auto` picks.

    python -m benchmarks.train_speed [--sizes 32 128 224] [--seconds 6] [--workers 0] [--compile]
                                     [--progressive EPOCHS]

No pipeline outputs are needed: the model is the project's ResNet18 (102 classes) and the images
are random uint8 pixels, so the figures measure speed only. For each size it runs, in this one
process, one after the other, with the same seed, batch and thread count:

- ``fp32 eager``: contiguous tensors, fp32, torchvision's convolutions and the default AdamW:
  the baseline;
- ``auto``: what the train stage runs here: the precision and memory format ``flowerlab.hardware``
  picks (``train.precision`` and ``train.channels_last`` left to auto), the GEMM weight gradient
  on tiny maps (``flowerlab.classifier.small_maps``) and fused AdamW. The configs below use the
  last two as well;
- ``channels_last bf16``: shown where `auto` did not pick bf16, to show why not;
- ``channels_last fp32``: shown where `auto` picked neither, to show why not;
- with ``--compile``, ``auto + torch.compile``: the model compiled by Inductor (its first two
  steps, the compile included, are printed separately);
- with ``--progressive EPOCHS``, where the train stage resizes progressively at that size
  (``train.progressive_resize: auto``, from 64 px): `auto` timed at each smaller size of an
  ``EPOCHS``-epoch run's schedule (``flowerlab.data.transforms.progressive_size``; the precision,
  memory format and batch of the full size, as the stage keeps them), and the run's images/s:
  every epoch has as many images, so it is the epochs over the sum of each epoch's time per image.
  That is a speed over a whole run, not a per-step one: the same number of epochs is the same
  training only where accuracy is no worse (README, "Progressive resizing").

It prints training images/s (forward, backward, AdamW step) and each config's ratio to the
baseline, and the data-wait share: the time the training DataLoader (the stage's own transforms
on stored uint8 images) takes to deliver a batch, over that plus the `auto` step time. Where the
augmentation has TrivialAugmentWide or random erasing, it also prints the wait with torchvision's
own transforms for those, image by image (what ``flowerlab.data.batched`` replaced).

Last, the ceiling: this CPU's fp32 and bf16 matrix-product speed (square ``--matmul-size``
products on every torch thread, the faster of MKL's and oneDNN's), and for each size the
convolution and matrix FLOPs of one training step (torch's ``FlopCounterMode``) over the
baseline's and `auto`'s step time. A config that keeps those FLOPs cannot run them faster than the
matrix product of its dtype does, so the fp32 baseline's share of the fp32 product bounds what
any fp32 path can gain over it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

from flowerlab.classifier.network import ImageClassifier
from flowerlab.classifier.small_maps import use_gemm_weight_grad
from flowerlab.data.datamodule import StoredImages
from flowerlab.data.store import PreparedData
from flowerlab.data.transforms import BatchAugment, choose_augmentation, choose_progressive, progressive_size
from flowerlab.hardware import choose_channels_last, choose_precision, cpu_model
from serve.predictor import median_seconds

BATCH = {32: 128, 64: 64, 96: 48, 128: 32, 160: 24, 224: 16}
CLASSES = 102


def images_per_second(images: torch.Tensor, labels: torch.Tensor, channels_last: bool, bf16: bool,
                      seconds: float = 0.0, min_steps: int = 3, num_classes: int = CLASSES,
                      compile: bool = False, project_step: bool = True) -> float:
    """Training images per second (forward, backward, AdamW step) of the project's ResNet18 on one
    fixed batch, after two warm-up steps: at least ``min_steps`` steps and ``seconds`` seconds.
    ``project_step``: as the train stage does (GEMM weight gradient on tiny maps, fused AdamW)."""
    torch.manual_seed(0)
    model = ImageClassifier(num_classes)
    if project_step:
        use_gemm_weight_grad(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=project_step)
    forward = torch.compile(model) if compile else model

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    warm_up = time.perf_counter()
    step(), step()  # oneDNN picks its kernels on first use; Inductor compiles
    if compile:
        print(f"     torch.compile: first two steps took {time.perf_counter() - warm_up:.1f} s")
    steps, start = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * len(labels) / (time.perf_counter() - start)


def training_step_flops(batch: int, size: int, num_classes: int = CLASSES) -> int:
    """Convolution and matrix-product FLOPs of one training step (forward and backward) of the
    project's ResNet18 on ``batch`` images of ``size`` px, as torch's FlopCounterMode counts them."""
    model = ImageClassifier(num_classes)
    labels = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(torch.zeros(batch, 3, size, size)), labels).backward()
    return counter.get_total_flops()


def matmul_flops_per_second(dtype: torch.dtype, max_size: int, calls: int = 5) -> tuple[float, int, str]:
    """FLOP/s of a square matrix product in ``dtype`` on every torch thread, its side and the
    library that ran it fastest: the median of ``calls`` after one warm-up, at the largest of 256,
    512, ... up to ``max_size`` whose first call is quick (emulated bf16 runs 2048x2048 products
    for a minute each).

    Two libraries compute it: ``torch.mm`` (MKL on x86) and, as the training step's convolutions
    do, oneDNN, through a 1x1 convolution over channels_last maps (at most 512 channels, as in
    ResNet18, and at most 8192 pixels, so that the maps stay in cache). They differ by CPU: on an AMD EPYC
    with AVX-512 (Zen 5), MKL's fp32 product ran at 220 GFLOP/s and oneDNN's at 516-540, so a ceiling
    from ``torch.mm`` alone is too low there."""
    size = 256
    while True:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        start = time.perf_counter()
        a @ b
        if size * 2 > max_size or time.perf_counter() - start > 0.05:
            break
        size *= 2
    channels = min(size, 512)
    pixels = min(size**3 // channels**2, 8192)  # powers of two: the maps are height x width exactly
    height = 2 ** (pixels.bit_length() // 2)
    maps = torch.randn(1, channels, height, pixels // height, dtype=dtype).to(
        memory_format=torch.channels_last)
    kernel = torch.randn(channels, channels, 1, 1, dtype=dtype)
    speeds = {"torch.mm": 2 * size**3 / median_seconds(lambda: a @ b, calls, warmup=1),
              "oneDNN 1x1 conv": 2 * channels**2 * pixels / median_seconds(
                  lambda: F.conv2d(maps, kernel), calls, warmup=1)}
    library = max(speeds, key=speeds.get)
    return speeds[library], size, library


class PerImageAugment(BatchAugment):
    """The stage's augmentation with torchvision's TrivialAugmentWide and RandomErasing applied
    image by image instead of batched."""

    def __init__(self, image_size: int, augmentation, num_classes: int):
        super().__init__(image_size, augmentation, num_classes)
        trivial, erase = v2.TrivialAugmentWide(), v2.RandomErasing(p=augmentation.random_erasing)
        if self.trivial is not None:
            self.trivial = lambda images: torch.stack([trivial(image) for image in images])
        if self.erase is not None:
            self.erase = lambda images: torch.stack([erase(image) for image in images])


def batch_seconds(size: int, batch: int, workers: int, batches: int = 12, augment=BatchAugment) -> float:
    """Seconds the training DataLoader takes per batch: the augmentation the train stage picks at
    ``size`` (``train.augment: auto``), on whole batches as the train stage's loader applies it
    (``augment``: :class:`PerImageAugment` for torchvision's transforms image by image)."""
    rng = np.random.default_rng(0)
    count = batch * batches
    data = PreparedData(rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8),
                        rng.integers(0, CLASSES, count), [str(i) for i in range(CLASSES)], size, "random")
    augmentation = choose_augmentation("auto", size)[1]
    dataset = StoredImages(data, list(range(count)), v2.Identity())
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        collate_fn=augment(size, augmentation, CLASSES))
    iterator = iter(loader)
    next(iterator)  # worker start-up is paid once per epoch, not per batch
    start = time.perf_counter()
    for _ in range(batches - 1):
        next(iterator)
    return (time.perf_counter() - start) / (batches - 1)


def progressive_run_speed(size: int, batch: int, epochs: int, full_speed: float, channels_last: bool,
                          bf16: bool, seconds: float) -> float:
    """Training images/s over an ``epochs``-epoch run that resizes progressively to ``size``: `auto`
    timed at each size of the schedule below ``size`` (``full_speed`` at ``size`` itself), each epoch
    the same number of images. Prints each size's speed and its epochs."""
    schedule = [progressive_size(epoch, epochs, size) for epoch in range(epochs)]
    speed = {size: full_speed}
    for smaller in sorted(set(schedule) - {size}):
        torch.manual_seed(0)
        images, labels = torch.rand(batch, 3, smaller, smaller), torch.randint(0, CLASSES, (batch,))
        speed[smaller] = images_per_second(images, labels, channels_last, bf16, seconds)
    print(f"{size:4d} {batch:5d} progressive {epochs}-epoch run, auto at each size: " + ", ".join(
        f"{s} px {speed[s]:.1f} img/s x {schedule.count(s)} epochs" for s in sorted(speed)))
    return epochs / sum(1 / speed[s] for s in schedule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 224])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per config")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the data wait")
    parser.add_argument("--compile", action="store_true", help="also time auto + torch.compile")
    parser.add_argument("--progressive", type=int, default=None, metavar="EPOCHS",
                        help="also the images/s over an EPOCHS-epoch run that resizes progressively")
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="largest side of the ceiling's matrix products")
    args = parser.parse_args()
    print(f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'size':>4s} {'batch':>5s} {'config':30s} {'img/s':>7s} {'ratio':>6s}")
    steps = []  # (size, batch, fp32 eager img/s, auto img/s, auto is bf16)
    for size in args.sizes:
        precision, why = choose_precision("auto", "cpu", image_size=size)
        auto_bf16 = precision.startswith("bf16")
        auto_cl, cl_why = choose_channels_last(None, precision, "cpu")
        print(f"{size:4d} auto picks {precision} ({why}), channels_last {auto_cl} ({cl_why})")
        batch = BATCH.get(size, max(8, 128 * 32 // size))
        auto = f"auto: {'channels_last' if auto_cl else 'contiguous'} {precision}"
        configs = [("fp32 eager", False, False, False), (auto, auto_cl, auto_bf16, False)]
        if not auto_bf16:
            configs.append(("channels_last bf16", True, True, False))
        if not auto_bf16 and not auto_cl:
            configs.append(("channels_last fp32", True, False, False))
        if args.compile:
            configs.append(("auto + torch.compile", auto_cl, auto_bf16, True))
        torch.manual_seed(0)
        images, labels = torch.rand(batch, 3, size, size), torch.randint(0, CLASSES, (batch,))
        speeds = [images_per_second(images, labels, cl, bf16, args.seconds, compile=compiled,
                                    project_step=index > 0)
                  for index, (_, cl, bf16, compiled) in enumerate(configs)]
        for (name, *_), speed in zip(configs, speeds):
            print(f"{size:4d} {batch:5d} {name:30s} {speed:7.1f} {speed / speeds[0]:6.2f}")
        if args.progressive and choose_progressive(None, size)[0]:
            run = progressive_run_speed(size, batch, args.progressive, speeds[1], auto_cl, auto_bf16,
                                        args.seconds)
            print(f"{size:4d} {batch:5d} {f'auto, progressive {args.progressive}-epoch run':30s} {run:7.1f} "
                  f"{run / speeds[0]:6.2f}")
        steps.append((size, batch, speeds[0], speeds[1], auto_bf16))
        step = batch / speeds[1]
        preset, augmentation = choose_augmentation("auto", size)
        kinds = [("batched", BatchAugment)]
        if augmentation.trivial_augment or augmentation.random_erasing:
            kinds.append(("torchvision per image", PerImageAugment))
        for kind, augment in kinds:
            wait = batch_seconds(size, batch, args.workers, augment=augment)
            print(f"{size:4d} {batch:5d} data wait ({preset} augmentation, {kind}, {args.workers} workers): "
                  f"{wait * 1000:.1f} ms per batch, {100 * wait / (wait + step):.1f}% of an auto step")
    print_ceiling(steps, args.matmul_size)


def print_ceiling(steps: list[tuple[int, int, float, float, bool]], matmul_size: int) -> None:
    """Each size's step FLOP/s against the matrix product's, and the fp32 bound that follows."""
    (fp32, fp32_side, fp32_by), (bf16, bf16_side, bf16_by) = (
        matmul_flops_per_second(dtype, matmul_size) for dtype in (torch.float32, torch.bfloat16))
    print(f"ceiling: matrix products on {torch.get_num_threads()} threads: fp32 {fp32 / 1e9:.1f} GFLOP/s "
          f"({fp32_side}x{fp32_side}, {fp32_by}), bf16 {bf16 / 1e9:.1f} GFLOP/s ({bf16_side}x{bf16_side}, "
          f"{bf16_by}; {bf16 / fp32:.3f}x fp32)")
    for size, batch, baseline, auto, auto_bf16 in steps:
        flops = training_step_flops(batch, size)
        base_rate, auto_rate = flops * baseline / batch, flops * auto / batch
        auto_peak = bf16 if auto_bf16 else fp32
        print(f"{size:4d} {batch:5d} ceiling: a step is {flops / 1e9:.1f} GFLOP; fp32 eager runs "
              f"{base_rate / 1e9:.1f} GFLOP/s ({100 * base_rate / fp32:.0f}% of the fp32 product), so an "
              f"fp32 path can be at most {fp32 / base_rate:.2f}x it; auto runs {auto_rate / 1e9:.1f} "
              f"GFLOP/s ({100 * auto_rate / auto_peak:.0f}% of its dtype's product)")


if __name__ == "__main__":
    main()
