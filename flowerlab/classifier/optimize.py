"""Inference artifacts of the trained classifier, and the rule that picks the one to serve.

Candidates (each a module with ExportedClassifier's contract: float RGB in [0, 1] -> (logits,
features), float32): ``fp32`` (the exported program, the portable baseline), ``int8`` (FX static
int8 for x86/fbgemm, calibrated on training images) and ``bf16`` (weights and activations in bf16,
built only where the CPU computes bf16 natively). The served one is a frozen TorchScript file:
a converted FX int8 model cannot be saved with torch.export, but traces exactly.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from flowerlab.classifier.network import ExportedClassifier, ImageClassifier
from flowerlab.hardware import BF16_CPU_FLAGS

INT8_CPU_FLAGS = ["avx2"]  # fbgemm's x86 int8 kernels
TIMED_BATCHES = (1, 16)


class Bfloat16Classifier(nn.Module):
    """The classifier in bf16: normalises in float32, runs the network in bf16, returns float32."""

    def __init__(self, classifier: ImageClassifier):
        super().__init__()
        classifier = copy.deepcopy(classifier).float()
        self.register_buffer("mean", classifier.mean.clone())
        self.register_buffer("std", classifier.std.clone())
        self.backbone = classifier.backbone.to(torch.bfloat16)
        self.head = classifier.head.to(torch.bfloat16)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(((images - self.mean) / self.std).to(torch.bfloat16))
        return self.head(features).float(), features.float()


def int8_classifier(classifier: ImageClassifier, calibration: Sequence[torch.Tensor]) -> nn.Module:
    """FX static int8 (x86 qconfig) of ExportedClassifier, calibrated on float image batches."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    model = ExportedClassifier(copy.deepcopy(classifier).float()).eval()
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs=(calibration[0],))
    with torch.inference_mode():
        for batch in calibration:
            prepared(batch)
    return convert_fx(prepared)


def calibration_indices(train: Sequence[int], count: int) -> list[int]:
    """``count`` training indices spread evenly over the split, so every class takes part."""
    if count >= len(train):
        return list(train)
    step = len(train) / count
    return [train[int(i * step)] for i in range(count)]


def bf16_flags(flags: set[str]) -> list[str]:
    """The native bf16 flags this CPU has (empty: no bf16 candidate)."""
    return [flag for flag in BF16_CPU_FLAGS if flag in flags]


def frozen_script(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``module`` traced on ``example`` and frozen (weights become constants, conv+bn fold)."""
    with torch.no_grad():
        traced = torch.jit.trace(module.eval(), example, check_trace=False)
    return torch.jit.freeze(traced.eval())


@torch.inference_mode()
def accuracy(module: Callable, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``module`` on uint8 images (N, 3, S, S), evaluated as the evaluate stage does."""
    correct = 0
    for start in range(0, len(images), batch_size):
        logits, _ = module(images[start:start + batch_size].float() / 255)
        correct += int((logits.argmax(dim=1) == labels[start:start + batch_size]).sum())
    return correct / max(len(images), 1)


@torch.inference_mode()
def images_per_second(modules: dict[str, Callable], images: torch.Tensor, batch_size: int,
                      rounds: int, warmup: int = 3) -> dict[str, float]:
    """Images/s of each module at ``batch_size``: the median of ``rounds`` timed calls.

    The modules take turns within each round, so a busy machine's slow spells hit them alike.
    """
    batch = images[:batch_size].float() / 255
    if len(batch) < batch_size:  # fewer images than the batch: repeat them
        batch = batch.repeat((batch_size + len(batch) - 1) // len(batch), 1, 1, 1)[:batch_size]
    for module in modules.values():
        for _ in range(warmup):
            module(batch)
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(rounds):
        for name, module in modules.items():
            start = time.perf_counter()
            module(batch)
            times[name].append(time.perf_counter() - start)
    return {name: batch_size / statistics.median(elapsed) for name, elapsed in times.items()}


@dataclass(frozen=True)
class Candidate:
    """What is measured (``module``), the CPU flags it needs, and its TorchScript for the served file."""

    module: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    requires_cpu_flags: list[str]
    script: Callable[[], torch.jit.ScriptModule]


def build_candidates(exported: Callable, classifier: ImageClassifier, calibration: Sequence[torch.Tensor],
                     flags: set[str]) -> tuple[dict[str, Candidate], dict[str, str]]:
    """fp32 (the exported program; its trace is served if chosen), int8 and, where the CPU computes
    bf16 natively, bf16; plus the candidates left out and why."""
    example = calibration[0][:2]
    # Contiguous like the exported program (training leaves the checkpoint's network channels_last).
    classifier = classifier.float().to(memory_format=torch.contiguous_format).eval()
    candidates = {"fp32": Candidate(exported, [],
                                    lambda: frozen_script(ExportedClassifier(classifier), example))}
    skipped = {}
    if all(flag in flags for flag in INT8_CPU_FLAGS):
        int8 = frozen_script(int8_classifier(classifier, calibration), example)
        candidates["int8"] = Candidate(int8, list(INT8_CPU_FLAGS), lambda: int8)
    else:
        skipped["int8"] = f"CPU lacks {' and '.join(INT8_CPU_FLAGS)}"
    if native := bf16_flags(flags):
        bf16 = frozen_script(Bfloat16Classifier(classifier), example)
        candidates["bf16"] = Candidate(bf16, native, lambda: bf16)
    else:
        skipped["bf16"] = f"CPU has none of {', '.join(BF16_CPU_FLAGS)}: bf16 would be emulated"
    return candidates, skipped


def measure(candidates: dict[str, Candidate], images: torch.Tensor, labels: torch.Tensor,
            rounds: int = 20) -> dict[str, Measurement]:
    """Accuracy on uint8 ``images`` and images/s at each of :data:`TIMED_BATCHES`, in this process."""
    modules = {name: candidate.module for name, candidate in candidates.items()}
    speeds = {batch: images_per_second(modules, images, batch, rounds) for batch in TIMED_BATCHES}
    return {name: Measurement(accuracy(module, images, labels), {b: speeds[b][name] for b in TIMED_BATCHES})
            for name, module in modules.items()}


@dataclass(frozen=True)
class Measurement:
    """One candidate on the validation split."""

    accuracy: float
    images_per_s: dict[int, float]  # batch size -> images/s


def choose_artifact(measured: dict[str, Measurement], max_accuracy_drop: float,
                    batch_size: int = 16, baseline: str = "fp32") -> tuple[str, str]:
    """The fastest candidate at ``batch_size`` whose accuracy is at most ``max_accuracy_drop`` below the
    baseline's (the baseline always qualifies), and why."""
    base = measured[baseline]
    floor = base.accuracy - max_accuracy_drop
    speed = {name: m.images_per_s[batch_size] / base.images_per_s[batch_size] for name, m in measured.items()}
    qualified = [name for name, m in measured.items() if name == baseline or m.accuracy >= floor]
    chosen = max(qualified, key=lambda name: speed[name])
    rejected = [f"{name} ({speed[name]:.2f}x) loses {base.accuracy - m.accuracy:.4f} val accuracy, "
                f"over {max_accuracy_drop}" for name, m in measured.items()
                if name not in qualified and speed[name] > speed[chosen]]
    if chosen == baseline:
        reason = f"{baseline}: no candidate is both faster at batch {batch_size} and within the accuracy drop"
    else:
        reason = (f"{chosen}: fastest at batch {batch_size} ({speed[chosen]:.2f}x {baseline}) with val "
                  f"accuracy {measured[chosen].accuracy:.4f}, within {max_accuracy_drop} of "
                  f"{baseline}'s {base.accuracy:.4f}")
    return chosen, "; ".join([reason, *rejected])


def optimize_report(measured: dict[str, Measurement], chosen: str, reason: str, skipped: dict[str, str],
                    baseline: str = "fp32") -> dict:
    """metrics/optimize.json: per candidate val accuracy, images/s and ratio to the baseline; the choice."""
    base = measured[baseline]

    def ratio(name: str, batch: int) -> float:
        return round(measured[name].images_per_s[batch] / base.images_per_s[batch], 4)

    candidates = {name: {"val_accuracy": round(m.accuracy, 6),
                         **{f"images_per_s_batch{b}": round(m.images_per_s[b], 2) for b in TIMED_BATCHES},
                         **{f"speedup_batch{b}": ratio(name, b) for b in TIMED_BATCHES}}
                  for name, m in measured.items()}
    last = TIMED_BATCHES[-1]
    return {"candidates": candidates, "skipped": skipped, "chosen": chosen, "reason": reason,
            "chosen_speedup": ratio(chosen, last), "chosen_speedup_batch1": ratio(chosen, 1),
            "chosen_accuracy_drop": round(base.accuracy - measured[chosen].accuracy, 6),
            "torch_threads": torch.get_num_threads()}
