"""The precision choice: bf16 only where the hardware computes it natively."""

from __future__ import annotations

import pytest

from flowerlab.hardware import choose_channels_last, choose_precision, cpu_flags, cpu_model

XEON = ("model name\t: Intel(R) Xeon(R) Platinum 8481C\n"
        "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
EPYC = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"


def test_cpuinfo_is_read() -> None:
    assert {"avx2", "amx_bf16"} <= cpu_flags(XEON) and "amx_bf16" not in cpu_flags(EPYC)
    assert cpu_model(XEON) == "Intel(R) Xeon(R) Platinum 8481C" and cpu_model(EPYC) == "AMD EPYC"
    assert cpu_flags("") == set()


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx2", "amx_bf16"}, "bf16-mixed"),
    ({"avx512f", "avx512_bf16"}, "bf16-mixed"),
    ({"avx2", "avx512f"}, "32-true"),  # AVX-512 without its bf16 extension emulates bf16
    (set(), "32-true"),
])
def test_auto_on_cpu_picks_bf16_only_with_native_support(flags: set[str], expected: str) -> None:
    precision, why = choose_precision("auto", "cpu", flags=flags)
    assert precision == expected and why


def test_an_explicit_precision_is_kept() -> None:
    assert choose_precision("bf16-mixed", "cpu", flags=set()) == ("bf16-mixed", "set in params")
    assert choose_precision("32-true", "cpu", flags={"amx_bf16"})[0] == "32-true"


def test_this_machine_gets_a_valid_choice() -> None:
    precision, why = choose_precision("auto")
    assert precision in ("bf16-mixed", "32-true") and why


@pytest.mark.parametrize(("size", "expected"), [(32, "32-true"), (63, "32-true"), (64, "bf16-mixed"),
                                                (224, "bf16-mixed")])
def test_auto_on_an_amx_cpu_keeps_small_images_in_fp32(size: int, expected: str) -> None:
    precision, why = choose_precision("auto", "cpu", flags={"amx_bf16"}, image_size=size)
    assert precision == expected and ("too small" in why) == (expected == "32-true")
    assert choose_precision("auto", "cpu", flags={"avx2"}, image_size=size)[0] == "32-true"


@pytest.mark.parametrize(("precision", "why"), [
    ("bf16-mixed", "bf16 kernels"),  # oneDNN's bf16 kernels
    ("32-true", "fp32 on the CPU"),  # measured faster at 32, 128 and 224 px on an AVX2-only EPYC
])
def test_channels_last_on_the_cpu_goes_with_what_pays(precision: str, why: str) -> None:
    chosen, reason = choose_channels_last(None, precision, "cpu")
    assert chosen is True and why in reason
    assert choose_channels_last(False, precision, "cpu") == (False, "set in params")
