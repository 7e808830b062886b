"""The first stage of batch embedding, run by the piece reader's tasks: read a piece, tokenise its good rows
and tag every row with its piece, so the writer can commit it whole. Light (see raylib/data/tokens.py)."""

from __future__ import annotations

import pyarrow as pa

from raylib.config import InputConfig
from raylib.data.sources import Piece, UnreadableInput, read_piece
from raylib.data.tokens import TOKENS, token_column
from raylib.embed.store import OutputStore
from raylib.models.tokenizer import PromptTokenizer

EMPTY = pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string()),
                  "_error": pa.array([], pa.string()), "_where": pa.array([], pa.string())})


def tokenize_piece(piece: Piece, config: InputConfig, tokenizer: PromptTokenizer, input_type: str,
                   output_uri: str) -> pa.Table:
    """The piece's rows as (id, _error, _where, input_ids, _piece, _piece_rows); bad rows keep null token ids.

    A piece without rows (a jsonl range inside one long line) has nothing to embed and is committed here. A
    piece that cannot be read is reported (not committed: the next run tries again) and sends no rows on.
    """
    try:
        table = read_piece(piece, config)
    except UnreadableInput as exc:
        OutputStore(output_uri).report_unreadable(piece.key, piece.describe(), str(exc))
        table = EMPTY
    else:
        if len(table) == 0:
            OutputStore(output_uri).commit_piece(piece.key, None, [], {"rows": 0, "errors": 0, "tokens": 0})
    return (
        table.drop_columns(["text"])
        .append_column(TOKENS, token_column(table, tokenizer, input_type))
        .append_column("_piece", pa.array([piece.key] * len(table), pa.string()))
        .append_column("_piece_rows", pa.array([len(table)] * len(table), pa.int64()))
    )
