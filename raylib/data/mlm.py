"""Text for masked-language-model training: input pieces read and tokenised in Ray Data tasks (the workers pack
and mask them with raylib.data.masking)."""

import ray.data

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
