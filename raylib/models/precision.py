"""Precision of the forward pass, for inference and training: fp32, or bf16 / fp16 autocast (matmuls in 16 bits,
norms and softmax in fp32)."""

from __future__ import annotations

import contextlib

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 in hardware: a CUDA GPU with bf16 support, or a CPU with
    AVX-512 BF16 / AMX (where oneDNN runs bf16 matmuls ~3x faster than fp32; elsewhere bf16 is emulated
    and slower)."""
    if device.type == "cuda":
        # emulated bf16 (T4, V100) is slower than fp16 there: only hardware bf16 counts
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and torch.cpu._is_avx512_bf16_supported()


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' becomes 'bf16' where the device computes it natively, else 'fp16' on a GPU (T4, V100: tensor cores
    without bf16), else 'fp32'; others stay as asked."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp16" if device.type == "cuda" else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's context for a resolved precision."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()
