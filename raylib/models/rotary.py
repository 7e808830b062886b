"""Rotary position embeddings (GPT-NeoX layout: rotate halves) with dynamic NTK scaling past the trained length."""

import torch


def ntk_base(base: float, dim: int, seq_len: int, trained_len: int, factor: float | None) -> float:
    """Rotary base for a sequence of `seq_len`: unchanged up to `trained_len`, NTK-scaled beyond it."""
    if not factor or seq_len <= trained_len:
        return base
    return base * ((factor * seq_len / trained_len) - (factor - 1)) ** (dim / (dim - 2))


def rotary_tables(dim: int, seq_len: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (seq_len, dim), computed in float32, halves repeated."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] features of x (batch, seq, heads, head_dim) with cos/sin (seq, dim) or
    (batch, seq, dim), or of packed rows x (tokens, heads, head_dim) with cos/sin (tokens, dim); the rest pass
    through."""
    dim = cos.shape[-1]
    rotated, passed = x[..., :dim], x[..., dim:]
    first, second = rotated.chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
    rotated = rotated * cos + torch.cat((-second, first), dim=-1) * sin
    return torch.cat((rotated, passed), dim=-1)
