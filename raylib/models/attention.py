"""Bidirectional attention over padded batches: flash-attn's variable-length kernel on a GPU when installed,
else PyTorch's scaled_dot_product_attention with the padding mask."""

import torch
import torch.nn.functional as F

try:
    from flash_attn import flash_attn_varlen_func
except ImportError:  # the CPU install and GPUs without the `gpu` extra
    flash_attn_varlen_func = None


def flash_usable(q: torch.Tensor) -> bool:
    return flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              backend: str = "auto") -> torch.Tensor:
    """Attention of q, k, v (batch, seq, heads, head_dim) where `mask` (batch, seq) marks real tokens.

    backend: "auto" (flash when usable, else SDPA), "flash" or "sdpa". Output has q's shape;
    rows at padded positions hold unspecified values.
    """
    if backend == "flash" or (backend == "auto" and flash_usable(q)):
        return _flash_varlen(q, k, v, mask)
    attn_mask = None if mask is None else mask[:, None, None, :].bool()
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
    return out.transpose(1, 2)


def _flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Drop the padding, run the variable-length kernel over the packed tokens, scatter back."""
    batch, seq_len = q.shape[:2]
    if mask is None:
        mask = torch.ones(batch, seq_len, dtype=torch.bool, device=q.device)
    lengths = mask.sum(dim=1, dtype=torch.int32)
    cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    keep = mask.flatten().nonzero(as_tuple=True)[0]
    packed = [t.reshape(batch * seq_len, *t.shape[2:])[keep] for t in (q, k, v)]
    max_len = int(lengths.max())
    out = flash_attn_varlen_func(*packed, cu_seqlens, cu_seqlens, max_len, max_len, causal=False)
    result = torch.zeros_like(q).reshape(batch * seq_len, *q.shape[2:])
    result[keep] = out
    return result.reshape(q.shape)
