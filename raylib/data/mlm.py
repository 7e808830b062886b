"""Text for masked-language-model training: input pieces read and tokenised in Ray Data tasks, tokens packed
into fixed windows in the workers, masked 80/10/10."""

import functools
from collections.abc import Iterable, Iterator

import pyarrow as pa
import ray.data
import torch
from transformers import AutoTokenizer

from raylib.config import InputConfig
from raylib.data.sources import Piece, list_input_files, plan_pieces, read_piece


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str):
    return AutoTokenizer.from_pretrained(path)


def tokenize_text_piece(batch: pa.Table, input_config: dict, tokenizer_path: str) -> pa.Table:
    """Read one piece and tokenise its good rows without special tokens; a bad row keeps null input_ids and
    its reason in _error, so the trainer can report it."""
    (fields,) = batch.to_pylist()
    table = read_piece(Piece(**fields), InputConfig.model_validate(input_config))
    texts = table.column("text").to_pylist()
    good = [row for row, error in enumerate(table.column("_error").to_pylist()) if error is None]
    token_ids: list = [None] * len(texts)
    tokenizer = _tokenizer(tokenizer_path)
    encoded = tokenizer([texts[row] for row in good], add_special_tokens=False, verbose=False)["input_ids"]
    for row, ids in zip(good, encoded):
        token_ids[row] = ids
    return pa.table({"input_ids": pa.array(token_ids, pa.list_(pa.int32())), "_error": table.column("_error"),
                     "_where": table.column("_where")})


def text_pieces(config: InputConfig) -> list[Piece]:
    """The input's pieces; a missing path or column fails here with ConfigError, before any Ray work."""
    return plan_pieces(*list_input_files(config), config)


def token_dataset(pieces: list[Piece], config: InputConfig, tokenizer_path: str, read_cpus: float) -> ray.data.Dataset:
    """A dataset of tokenised rows (input_ids, _error, _where) over the pieces; each read/tokenise task asks
    for `read_cpus` so it fits beside the training workers."""
    return ray.data.from_items([piece.to_dict() for piece in pieces], override_num_blocks=len(pieces)).map_batches(
        tokenize_text_piece, batch_size=1, batch_format="pyarrow", num_cpus=read_cpus,
        fn_kwargs={"input_config": config.model_dump(), "tokenizer_path": tokenizer_path},
    )


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
