"""Test-set metrics for the classifier, computed with torchmetrics from logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassF1Score


@torch.inference_mode()
def run_batches(module, inputs: torch.Tensor, batch_size: int):
    """``module`` over ``inputs`` in batches; outputs (a tensor or a tuple of them) concatenated."""
    outputs = [module(inputs[start:start + batch_size]) for start in range(0, len(inputs), batch_size)]
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outputs))
    return torch.cat(outputs)


def predict_batches(module, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run uint8 images (N, 3, H, W) through an exported classifier: (logits, features)."""
    # Convert per batch: a float copy of a whole real-size dataset would not fit in memory.
    return run_batches(lambda batch: module(batch.float() / 255), images, batch_size)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """accuracy, top-5 accuracy, macro F1, cross-entropy loss and expected calibration error."""
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1)
    top_k = min(5, num_classes)
    return {
        "accuracy": MulticlassAccuracy(num_classes, average="micro")(probs, labels).item(),
        "top5_accuracy": MulticlassAccuracy(num_classes, top_k=top_k, average="micro")(probs, labels).item(),
        "macro_f1": MulticlassF1Score(num_classes, average="macro")(probs, labels).item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "ece": MulticlassCalibrationError(num_classes, n_bins=15, norm="l1")(probs, labels).item(),
        "samples": int(len(labels)),
    }


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy of each class (NaN-free: classes absent from the labels score 0)."""
    return MulticlassAccuracy(logits.shape[1], average=None)(logits, labels)
