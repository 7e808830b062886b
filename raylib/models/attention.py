"""Bidirectional attention, over padded batches or over packed tokens.

Padded: q, k, v are (batch, seq, heads, head_dim) with a (batch, seq) mask of real tokens; PyTorch's
scaled_dot_product_attention. Packed: the padding is dropped once per forward pass (`Packing`), every layer
(projections and MLP included, where padding costs as much as real tokens) runs on (tokens, ...) rows only, and
attention runs flash-attn's variable-length kernel, or SDPA on the re-padded rows (the same bookkeeping, testable
on a CPU).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:
    from flash_attn import flash_attn_varlen_func
except ImportError:  # the CPU install and GPUs without the `gpu` extra
    flash_attn_varlen_func = None

BACKENDS = ("auto", "flash", "sdpa", "sdpa_unpadded")


def flash_usable(x: torch.Tensor) -> bool:
    """flash-attn is installed, x is on a GPU and the pass computes in 16 bits (x's dtype or autocast)."""
    if flash_attn_varlen_func is None or not x.is_cuda:
        return False
    half = (torch.float16, torch.bfloat16)
    return x.dtype in half or (torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") in half)


def packed_kernel(backend: str, x: torch.Tensor) -> str | None:
    """The kernel of packed attention for a forward pass over `x` ("flash" or "sdpa"), or None to stay padded.

    auto: flash-attn where installed and x is on a GPU, else padded SDPA; flash: always flash-attn;
    sdpa: padded SDPA; sdpa_unpadded: packed rows with SDPA as the kernel."""
    if backend == "flash" or (backend == "auto" and flash_usable(x)):
        return "flash"
    return "sdpa" if backend == "sdpa_unpadded" else None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA of q, k, v (batch, seq, heads, head_dim) where `mask` (batch, seq) marks real tokens; output has q's
    shape and rows at padded positions hold unspecified values."""
    attn_mask = None if mask is None else mask[:, None, None, :].bool()
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
    return out.transpose(1, 2)


@dataclass(frozen=True)
class Packing:
    """Where the real tokens of a padded (batch, seq) batch go when packed into rows of one (tokens, ...) tensor."""

    mask: torch.Tensor  # (batch, seq), true at real tokens
    keep: torch.Tensor  # (tokens,) flat indices of the real tokens in batch * seq
    positions: torch.Tensor  # (tokens,) each real token's position in its sequence
    cu_seqlens: torch.Tensor  # (batch + 1,) int32 offsets of each sequence in the packed rows
    max_len: int

    @classmethod
    def of(cls, mask: torch.Tensor) -> "Packing":
        """The packing of a (batch, seq) mask of real tokens (any padding side)."""
        lengths = mask.sum(dim=1, dtype=torch.int32)
        keep = mask.flatten().nonzero(as_tuple=True)[0]
        return cls(mask=mask.bool(), keep=keep, positions=keep % mask.shape[1],
                   cu_seqlens=F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0)), max_len=int(lengths.max()))

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq, ...) -> (tokens, ...)."""
        return x.flatten(0, 1)[self.keep]

    def repad(self, x: torch.Tensor) -> torch.Tensor:
        """(tokens, ...) -> (batch, seq, ...), zeros at padded positions."""
        padded = x.new_zeros(self.mask.numel(), *x.shape[1:])
        padded[self.keep] = x
        return padded.unflatten(0, self.mask.shape)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing,
                     kernel: str) -> torch.Tensor:
    """Attention of packed q, k, v (tokens, heads, head_dim) within each sequence of `packing`; kernel "flash"
    (flash-attn varlen) or "sdpa" (re-pad, SDPA with the mask, pack again)."""
    if kernel == "flash":
        return flash_attn_varlen_func(q, k, v, packing.cu_seqlens, packing.cu_seqlens, packing.max_len,
                                      packing.max_len, causal=False)
    out = attention(packing.repad(q), packing.repad(k), packing.repad(v), packing.mask)
    return packing.unpad(out)
