"""Text for masked-language-model training: input pieces read and tokenised in Ray Data tasks, tokens packed
into fixed windows in the workers, masked 80/10/10."""

from collections.abc import Iterable, Iterator

import ray.data
import torch

from raylib.config import InputConfig
from raylib.data.sources import Piece, list_input_files, plan_pieces, read_pieces
from raylib.data.tokens import text_tokens
from raylib.models.tokenizer import PromptTokenizer


def text_pieces(config: InputConfig, section: str = "data") -> list[Piece]:
    """The pieces of the job's text input (the `section` of its config); a missing path or column fails here
    with ConfigError, before any Ray work."""
    return plan_pieces(*list_input_files(config, section), config, section)


def text_tokenizer(tokenizer_path: str) -> PromptTokenizer:
    """The MLM job's tokenizer (config key `tokenizer`); a directory without a fast tokenizer is a ConfigError."""
    # text is tokenised whole (text_tokens): max_length is not used
    return PromptTokenizer.from_directory(tokenizer_path, {"document": ""}, max_length=512, key="tokenizer")


def token_dataset(pieces: list[Piece], config: InputConfig, tokenizer: PromptTokenizer,
                  read_cpus: float) -> ray.data.Dataset:
    """A dataset of tokenised rows (input_ids, _error, _where) over the pieces; each read/tokenise task asks
    for `read_cpus` so it fits beside the training workers."""
    return read_pieces(pieces, read_cpus, text_tokens, config=config, tokenizer=tokenizer)


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
