"""`chunking: mean`: long inputs as max_length windows whose vectors are pooled back into one per input.

A window is the input's head + a piece of its body + its tail, at most max_length tokens. The head is the
leading run of special tokens ([CLS]) plus, for texts, the input type's prefix tokens ("query: "); the tail is
the trailing run of special tokens ([SEP]). So every window is shaped like a normal input of the same type
(and the prompt pooling leaves out stays at its start); token-id inputs split the same way, with no prefix.
The body is cut into consecutive pieces of max_length - head - tail tokens, the last one shorter; an input that
fits is its own single window, unchanged. Pure functions, no Ray: the ingress in serve/app.py calls them.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from serve.openai_api import ApiError


def edges(ids: list[int], special_ids: Collection[int]) -> tuple[int, int]:
    """(leading, trailing) counts of the special tokens around `ids`' body."""
    lead = next((i for i, token in enumerate(ids) if token not in special_ids), len(ids))
    trail = next((i for i, token in enumerate(reversed(ids[lead:])) if token not in special_ids), 0)
    return lead, trail


def windows(token_ids: list[list[int]], max_length: int, special_ids: Collection[int], prefix_length: int,
            max_windows: int) -> tuple[list[list[int]], list[int]]:
    """(windows of all inputs in input order, windows per input); ApiError(400, param chunking) when the inputs
    make more than `max_windows` windows, or an input's head and tail leave no room for its body."""
    spans, counts = [], []
    for index, ids in enumerate(token_ids):
        lead, trail = edges(ids, special_ids)
        body_end = len(ids) - trail
        head = min(lead + prefix_length, body_end)
        room = max_length - head - trail
        if len(ids) > max_length and room < 1:
            raise ApiError(400, f"chunking: input[{index}] has {head + trail} special and prefix tokens, no room "
                           f"for text in windows of {max_length}; send it without them", param="chunking")
        count = 1 if len(ids) <= max_length else -(-(body_end - head) // room)
        spans.append((ids, head, body_end, room))
        counts.append(count)
    if sum(counts) > max_windows:
        raise ApiError(400, f"chunking: the inputs make {sum(counts)} windows of at most {max_length} tokens; at most "
                       f"{max_windows} per request (limits.max_inputs); send fewer or shorter inputs",
                       param="chunking", code="too_many_windows")
    out = []
    for (ids, head, body_end, room), count in zip(spans, counts):
        if count == 1:
            out.append(ids)
        else:
            body = ids[head:body_end]
            out += [ids[:head] + body[start:start + room] + ids[body_end:] for start in range(0, len(body), room)]
    return out, counts


def mean_pool(vectors: np.ndarray, lengths: list[int], counts: list[int], normalize: bool) -> np.ndarray:
    """One vector per input from its windows' `vectors` (windows, dims): the mean weighted by each window's
    token count (`lengths`), re-normalised when the model normalises; `counts`: windows per input, in order."""
    weights = np.asarray(lengths, dtype=np.float64)[:, None]
    starts = np.cumsum([0] + counts[:-1])
    pooled = (np.add.reduceat(vectors * weights, starts) / np.add.reduceat(weights, starts)).astype(np.float32)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled
