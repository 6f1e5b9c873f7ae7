"""What this CPU computes fast: the flags that decide which predict runtime pays off (``/proc/cpuinfo``)."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any

import torch

FAST_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # 8-bit dot products accumulated in 32 bits


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX tiles or AVX512-BF16), where bf16 autocast pays off."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    for name in checks:
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:
            continue
    return False


def cpu_description() -> dict[str, Any]:
    """The CPU model name and the flags that decide CPU inference speed (from ``/proc/cpuinfo`` on Linux)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
    return {"model": name, "flags": [flag for flag in wanted if flag in flags]}


def cpu_has_fast_int8(flags: Iterable[str] | None = None) -> bool:
    """Whether this CPU (or one with ``flags``, from ``/proc/cpuinfo``) runs int8 faster than float32.

    Only x86 flags are known here: on other CPUs (not measured) this says no, so ``auto`` keeps float32.
    """
    if flags is None:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return False
        flags = cpu_description()["flags"]
    return any(flag in FAST_INT8_FLAGS for flag in flags)
