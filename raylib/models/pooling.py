"""Pooling of token states into one vector per sequence."""

import torch

POOLINGS = ("mean", "cls", "last", "latent")


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


def without_prompt(attention_mask: torch.Tensor, prompt_lengths: torch.Tensor | None) -> torch.Tensor:
    """The pooling mask: `attention_mask` with each row's first prompt_lengths[row] tokens (its prefix or
    instruction) set to 0; right padding assumed. None: the attention mask itself."""
    if prompt_lengths is None:
        return attention_mask
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return attention_mask * (positions.unsqueeze(0) >= prompt_lengths.to(attention_mask.device).unsqueeze(1))


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor | None, mode: str,
                head: torch.nn.Module | None = None) -> torch.Tensor:
    """One vector per row: the latent-attention `head` or `mode` pooling over the tokens after each prompt
    ("cls" and "last" keep their token whatever the prompt)."""
    mask = without_prompt(attention_mask, prompt_lengths)
    if mode == "latent":
        return head(hidden, mask)
    return pool(hidden, mask if mode == "mean" else attention_mask, mode)
