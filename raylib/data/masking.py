"""MLM inputs from token ids: documents packed into fixed windows, 30% of the tokens masked 80/10/10 (plain
torch, no Ray: the training workers and the benchmarks share it)."""

from collections.abc import Iterable, Iterator

import torch


def pack_windows(token_lists: Iterable[list[int]], seq_len: int, cls_id: int, sep_id: int) -> Iterator[list[int]]:
    """Concatenate documents (each ended by [SEP]) and cut them into [CLS] + (seq_len - 2) tokens + [SEP] windows."""
    body = seq_len - 2
    buffer: list[int] = []
    for ids in token_lists:
        buffer.extend(ids)
        buffer.append(sep_id)
        while len(buffer) >= body:
            yield [cls_id, *buffer[:body], sep_id]
            del buffer[:body]


def mask_tokens(input_ids: torch.Tensor, probability: float, mask_id: int, vocab_size: int,
                special_ids: list[int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `probability` of the non-special tokens; of those 80% -> [MASK], 10% -> a random
    token, 10% unchanged. Returns (masked input ids, labels with -100 where not picked)."""
    special = torch.isin(input_ids, torch.tensor(special_ids))
    picked = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, -100))
    draw = torch.rand(input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[picked & (draw < 0.8)] = mask_id
    randomised = picked & (draw >= 0.8) & (draw < 0.9)
    masked[randomised] = torch.randint(vocab_size, (int(randomised.sum()),), generator=generator)
    return masked, labels
