"""The first stage of batch embedding, after the piece reader: tokenise a piece's good rows and tag every
row with its piece, so the writer can commit it whole. Light (see raylib/data/tokens.py)."""

from __future__ import annotations

import pyarrow as pa

from raylib.data.sources import Piece
from raylib.data.tokens import TOKENS, token_column
from raylib.embed.store import OutputStore
from raylib.models.tokenizer import PromptTokenizer


def tokenize_piece(table: pa.Table, piece: Piece, tokenizer: PromptTokenizer, input_type: str,
                   output_uri: str) -> pa.Table:
    """A read piece (id, text, _error, _where) as (id, _error, _where, input_ids, _piece, _piece_rows); bad
    rows keep null token ids.

    A piece without rows (a jsonl range inside one long line) has nothing to embed and is committed here.
    """
    if len(table) == 0:
        OutputStore(output_uri).commit_piece(piece.key, None, [], {"rows": 0, "errors": 0, "tokens": 0})
    return (
        table.drop_columns(["text"])
        .append_column(TOKENS, token_column(table, tokenizer, input_type))
        .append_column("_piece", pa.array([piece.key] * len(table), pa.string()))
        .append_column("_piece_rows", pa.array([len(table)] * len(table), pa.int64()))
    )
