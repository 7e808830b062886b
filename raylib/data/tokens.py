"""Token ids of a piece's good rows, for the jobs that tokenise in their reading tasks (embedding, MLM).

Light on purpose (pyarrow and the `tokenizers` library, no torch or transformers): Ray Data runs it in fresh
worker processes, whose start-up competes with the model actors and training workers for the same cores.
"""

from __future__ import annotations

import pyarrow as pa

from raylib.config import InputConfig
from raylib.data.sources import Piece, read_piece
from raylib.models.tokenizer import PromptTokenizer

TOKENS = "input_ids"


def token_column(table: pa.Table, tokenizer: PromptTokenizer, input_type: str = "document",
                 whole: bool = False) -> pa.Array:
    """Token ids of the good rows of a read piece (id, text, _error, _where); bad rows get null. `whole`:
    neither special tokens nor truncation (text to be packed)."""
    texts = table.column("text").to_pylist()
    good = [row for row, error in enumerate(table.column("_error").to_pylist()) if error is None]
    token_ids: list = [None] * len(texts)
    for row, ids in zip(good, tokenizer([texts[row] for row in good], input_type, truncate=not whole,
                                            special_tokens=not whole)):
        token_ids[row] = ids
    return pa.array(token_ids, pa.list_(pa.int32()))


def text_tokens(piece: Piece, config: InputConfig, tokenizer: PromptTokenizer) -> pa.Table:
    """MLM's reading step: a piece's rows as (input_ids, _error, _where), text without special tokens or
    truncation (the trainer packs it into windows)."""
    table = read_piece(piece, config)
    return pa.table({TOKENS: token_column(table, tokenizer, whole=True),
                     "_error": table.column("_error"), "_where": table.column("_where")})
