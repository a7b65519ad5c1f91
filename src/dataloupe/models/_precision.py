"""Which number format a forward pass runs in: the one rule training, collect and serving share."""

from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU with bf16 support, or
    a CPU with AMX tiles (Intel Xeon from Sapphire Rapids on) or AVX512-BF16 dot products (AMD Zen 4
    on, Intel Cooper Lake): oneDNN runs bf16 convolutions and matmuls on them. ResNet-18 at 128 px
    trains 1.9x and evaluates 2.5x as fast as in float32 with AMX, 1.9x and 1.7x with AVX512-BF16
    (bench/RESULTS.md). Elsewhere autocast to bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
            probe = getattr(torch.cpu, name, None)  # torch's own CPUID checks (private, hence getattr)
            if probe and probe():
                return True
    return False


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a recipe's ``amp`` on ``device``: ``bf16`` always; ``auto`` bf16 on CUDA;
    ``native`` bf16 wherever the hardware computes it (:func:`native_bf16`: CUDA, or a CPU with AMX or
    AVX512-BF16, where ResNet-18 trains ~1.9x as fast as in float32, bench/RESULTS.md);
    ``none`` (and anything else) float32."""
    if setting == "bf16" or (setting == "auto" and device.type == "cuda") or \
            (setting == "native" and native_bf16(device)):
        return torch.bfloat16
    return None
