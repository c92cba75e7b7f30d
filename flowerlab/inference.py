"""Running exported programs over stored images in batches (evaluation stages, benchmarks)."""

from __future__ import annotations

import torch


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
