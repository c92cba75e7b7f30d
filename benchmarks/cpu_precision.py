"""fp32 vs bf16 autocast, contiguous vs channels_last, on this CPU: speed and test accuracy.

Run after `dvc repro` (it reads the prepared data, the split and the best checkpoint):

    python -m benchmarks.cpu_precision [--steps 8] [--batch 128]

Every configuration runs in the same process, one after the other, with the same seed, inputs
and thread count, so the printed ratios compare like with like.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.train_speed import images_per_second
from flowerlab import paths
from flowerlab.classifier.module import FlowerClassifier
from flowerlab.classifier.network import ImageClassifier
from flowerlab.data.split import load_split
from flowerlab.data.store import load_prepared

CONFIGS = [(False, False), (True, False), (False, True), (True, True)]  # (channels_last, bf16)


def name(channels_last: bool, bf16: bool) -> str:
    return f"{'channels_last' if channels_last else 'contiguous':13s} {'bf16' if bf16 else 'fp32'}"


def train_speed(images, labels, channels_last: bool, bf16: bool, steps: int) -> float:
    """Training images per second: forward, backward and AdamW step."""
    return images_per_second(images, labels, channels_last, bf16, min_steps=steps,
                             num_classes=int(labels.max()) + 1)


@torch.inference_mode()
def eval_speed_and_accuracy(model, images, labels, channels_last: bool, bf16: bool, batch: int):
    """Inference images per second over the test split, and accuracy."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    correct, start = 0, time.perf_counter()
    for i in range(0, len(labels), batch):
        x = images[i:i + batch].float() / 255
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            correct += (model(x).argmax(1) == labels[i:i + batch]).sum().item()
    return len(labels) / (time.perf_counter() - start), correct / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    data = load_prepared(paths.PREPARED_DIR)
    test_images, test_labels = data.tensors(load_split(paths.SPLIT_FILE)["test"])
    train_images = test_images[: args.batch].float() / 255
    train_labels = test_labels[: args.batch]
    model = FlowerClassifier.load_from_checkpoint(
        f"{paths.CLASSIFIER_CHECKPOINTS}/best.ckpt", map_location="cpu",
        net=ImageClassifier(len(data.classes))).net.float().eval()
    model = model.to(memory_format=torch.contiguous_format)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image size "
          f"{data.image_size}, batch {args.batch}, test images {len(test_labels)}")
    results = {}
    for channels_last, bf16 in CONFIGS:
        train = train_speed(train_images, train_labels, channels_last, bf16, args.steps)
        infer, acc = eval_speed_and_accuracy(model, test_images, test_labels, channels_last, bf16,
                                             args.batch)
        results[(channels_last, bf16)] = (train, infer, acc)
    base_train, base_infer, _ = results[(False, False)]
    print(f"{'config':18s} {'train img/s':>11s} {'ratio':>6s} {'infer img/s':>11s} {'ratio':>6s} "
          f"{'test acc':>8s}")
    for config, (train, infer, acc) in results.items():
        print(f"{name(*config):18s} {train:11.0f} {train / base_train:6.2f} {infer:11.0f} "
              f"{infer / base_infer:6.2f} {acc:8.4f}")


if __name__ == "__main__":
    main()
