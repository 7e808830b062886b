"""Pooling of token states into one vector per sequence."""

import torch

POOLINGS = ("mean", "cls", "last")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool `hidden` (batch, seq, dim) over the tokens where `attention_mask` (batch, seq) is 1.

    "last" takes the last real token, assuming right padding.
    """
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        last = attention_mask.sum(1).long() - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r}; use one of {POOLINGS}")
