"""Test-set metrics for the classifier, computed with torchmetrics from logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassF1Score


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


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> list[dict]:
    """Each class's accuracy and its number of test images; a class with none (a class of one or
    two images can get none in the split) has no accuracy, ``None``, not torchmetrics' 0."""
    accuracy = MulticlassAccuracy(len(classes), average=None)(logits, labels).tolist()
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    return [{"class": name, "accuracy": round(acc, 6) if count else None, "test_images": count}
            for name, acc, count in zip(classes, accuracy, counts, strict=True)]
