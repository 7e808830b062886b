"""Token-budget batches: sequences sorted by length, as many per batch as fit the padded-token budget."""

from collections.abc import Sequence

import numpy as np


def token_budget_batches(lengths: Sequence[int], batch_tokens: int) -> list[np.ndarray]:
    """Split indices of `lengths` into batches whose padded size (rows x longest) stays within `batch_tokens`.

    Longest sequences come first, so a batch that does not fit in memory fails at once. A sequence
    longer than the budget gets a batch of its own.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(batch_tokens // longest, 1)
        batches.append(order[start : start + size])
        start += size
    return batches
