"""What this machine does fast: the training precision chosen from the CPU's and the GPU's features.

bf16 pays where the hardware computes it natively: a CPU with AMX (``amx_bf16``) or AVX512-BF16
(``avx512_bf16``), or a GPU that supports it. Elsewhere (e.g. AVX2-only CPUs) bf16 is emulated and
slower than fp32, so fp32 is the fast correct path. On the CPU, images under
``BF16_MIN_IMAGE_SIZE`` px stay fp32 even with AMX: their convolutions are too small for bf16 to
pay for autocast's casts (``benchmarks/train_speed.py`` on an AMX Xeon: 0.73x at 32 px, 1.15x at
64 px, 2.2x at 128 px).

The memory format follows measurements too: channels_last pays for bf16 (oneDNN's bf16 kernels
want it), on GPUs, and for fp32 on the CPU at every size measured. On an AVX2-only EPYC with the
project's training step (fused AdamW, tiny-map weight gradients), in alternating rounds:
2.4-2.9x contiguous at 32 px (with the tiny-map route), 1.07-1.15x at 128 px, 1.06-1.12x at 224 px.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
BF16_MIN_IMAGE_SIZE = 64


def _cpuinfo_field(name: str, cpuinfo: str | None) -> str | None:
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    for line in cpuinfo.splitlines():
        if line.split(":")[0].strip() == name:
            return line.partition(":")[2].strip()
    return None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none, e.g. not Linux)."""
    return set((_cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name, as ``lscpu`` shows it."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or "unknown CPU"


def on_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` setting trains on a CUDA GPU here."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def choose_precision(requested: str, accelerator: str = "auto", flags: set[str] | None = None,
                     gpu_bf16: bool | None = None, image_size: int | None = None) -> tuple[str, str]:
    """Lightning's ``precision`` for ``requested`` (``auto`` or an explicit value), and why;
    ``image_size`` is the side of the training images, where known."""
    if requested != "auto":
        return requested, "set in params"
    if on_gpu(accelerator):
        supported = torch.cuda.is_bf16_supported() if gpu_bf16 is None else gpu_bf16
        if supported:
            return "bf16-mixed", f"GPU {torch.cuda.get_device_name(0)} supports bf16"
        return "32-true", "GPU without bf16 support"
    flags = cpu_flags() if flags is None else flags
    native = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if native and image_size is not None and image_size < BF16_MIN_IMAGE_SIZE:
        return "32-true", (f"CPU has {' and '.join(native)}, but {image_size}-px images are too small "
                           f"for bf16 to pay (under {BF16_MIN_IMAGE_SIZE} px)")
    if native:
        return "bf16-mixed", f"CPU has {' and '.join(native)}"
    return "32-true", "CPU has neither AMX nor AVX512-BF16: bf16 would be emulated"


def choose_channels_last(requested: bool | None, precision: str,
                         accelerator: str = "auto") -> tuple[bool, str]:
    """Whether to train channels_last (``requested``, or where it pays when None), and why."""
    if requested is not None:
        return requested, "set in params"
    if "bf16" in str(precision):
        return True, "bf16 kernels want channels_last"
    if on_gpu(accelerator):
        return True, "GPU"
    return True, "fp32 on the CPU: channels_last measured faster at 32-224 px"
