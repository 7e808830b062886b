"""The first stage of batch embedding: read one input piece, check its rows and tokenise the good ones.

Light on purpose (pyarrow and the `tokenizers` library, no torch or transformers): Ray Data runs it as tasks
in fresh worker processes, and their start-up competes with the model actors for the same cores.
"""

from __future__ import annotations

import pyarrow as pa

from raylib.config import InputConfig
from raylib.data.sources import Piece, read_piece
from raylib.embed.store import OutputStore
from raylib.models.tokenizer import PromptTokenizer

TOKENS = "input_ids"


def tokenize_piece(batch: pa.Table, input_config: dict, tokenizer: PromptTokenizer, input_type: str,
                   output_uri: str) -> pa.Table:
    """Read one piece, check its rows and tokenise the good ones (bad rows keep null token ids).

    A piece without rows (a jsonl range inside one long line) has nothing to embed and is committed here.
    """
    (fields,) = batch.to_pylist()
    piece = Piece(**fields)
    table = read_piece(piece, InputConfig.model_validate(input_config))
    if len(table) == 0:
        OutputStore(output_uri).commit_piece(piece.key, None, [], {"rows": 0, "errors": 0, "tokens": 0})
    texts = table.column("text").to_pylist()
    good = [row for row, error in enumerate(table.column("_error").to_pylist()) if error is None]
    token_ids: list = [None] * len(texts)
    for row, ids in zip(good, tokenizer([texts[row] for row in good], input_type)):
        token_ids[row] = ids
    return (
        table.drop_columns(["text"])
        .append_column(TOKENS, pa.array(token_ids, pa.list_(pa.int32())))
        .append_column("_piece", pa.array([piece.key] * len(texts), pa.string()))
        .append_column("_piece_rows", pa.array([len(texts)] * len(texts), pa.int64()))
    )
