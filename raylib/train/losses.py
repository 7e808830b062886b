"""Contrastive losses: InfoNCE over in-batch negatives gathered from every worker (gradients flow back to
the worker that made each vector) plus hard negatives, an optional symmetric term, and Matryoshka dimensions.

Shapes: queries (b, d), positives (b, d), hard negatives (b, k, d); b is this worker's batch.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather


def gather(vectors: torch.Tensor) -> torch.Tensor:
    """Every worker's rows, this worker's first-dimension order kept by rank, with autograd through the
    gather (each worker gets the gradient of its own rows summed over all workers' losses)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return vectors
    return torch.cat(all_gather(vectors.contiguous()), dim=0)


def _offset(rows: int) -> int:
    return dist.get_rank() * rows if dist.is_initialized() else 0


def info_nce(queries: torch.Tensor, positives: torch.Tensor, hard_negatives: torch.Tensor | None,
             scale: torch.Tensor | float, in_batch: bool = True, symmetric: bool = False) -> torch.Tensor:
    """Mean cross-entropy of each query picking its positive, vectors L2-normalised, logits = scale x cosine.

    in_batch: the candidates are every worker's positives and hard negatives (NV-Embed stage 1, Nomic);
    otherwise only the query's own positive and hard negatives (NV-Embed stage 2). symmetric adds the
    document -> query direction over every worker's queries. Averaging the per-worker losses (as DDP averages
    gradients) equals the loss of one worker holding the whole global batch.
    """
    queries, positives = F.normalize(queries, dim=-1), F.normalize(positives, dim=-1)
    negatives = None if hard_negatives is None or hard_negatives.shape[1] == 0 else F.normalize(hard_negatives, dim=-1)
    rows = queries.shape[0]
    if not in_batch:
        candidates = positives.unsqueeze(1) if negatives is None else torch.cat([positives.unsqueeze(1), negatives], 1)
        logits = scale * torch.einsum("bd,bcd->bc", queries, candidates)
        return F.cross_entropy(logits, torch.zeros(rows, dtype=torch.long, device=queries.device))
    all_positives = gather(positives)
    candidates = all_positives if negatives is None else torch.cat([all_positives, gather(negatives.flatten(0, 1))])
    labels = torch.arange(rows, device=queries.device) + _offset(rows)
    loss = F.cross_entropy(scale * queries @ candidates.T, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(scale * positives @ gather(queries).T, labels)) / 2
    return loss


def matryoshka_info_nce(queries: torch.Tensor, positives: torch.Tensor, hard_negatives: torch.Tensor | None,
                        scale: torch.Tensor | float, dimensions: list[int] | None, **options) -> torch.Tensor:
    """InfoNCE averaged over the leading `dimensions` of every vector (each re-normalised); None: full size."""
    if not dimensions:
        return info_nce(queries, positives, hard_negatives, scale, **options)
    losses = [
        info_nce(queries[..., :size], positives[..., :size],
                 None if hard_negatives is None else hard_negatives[..., :size], scale, **options)
        for size in dimensions
    ]
    return torch.stack(losses).mean()
