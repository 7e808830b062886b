"""The last stage of batch embedding: commit each piece of a block to the output store.

Writers are long-lived actors (a small pool) that import only pyarrow: as tasks, one per piece, they landed in
fresh worker processes whose start-up cost more CPU than the writing itself.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from raylib.embed.store import OutputStore

COUNTS = pa.schema([("piece", pa.string()), ("rows", pa.int64()), ("errors", pa.int64()), ("tokens", pa.int64())])


class PieceWriter:
    """Commits every piece of a block it receives (vectors with the output's schema `metadata`, bad rows,
    manifest entry)."""

    def __init__(self, output_uri: str, id_column: str, metadata: dict[bytes, bytes]):
        self.store, self.id_column, self.metadata = OutputStore(output_uri), id_column, metadata

    def __call__(self, table: pa.Table) -> pa.Table:
        """Returns one row of counts per committed piece."""
        return pa.Table.from_pylist([self.commit(table, key) for key in pc.unique(table.column("_piece")).to_pylist()],
                                    schema=COUNTS)

    def commit(self, table: pa.Table, key: str) -> dict:
        """Writes the rows of piece `key` (all of them must be in `table`) and records the piece as finished."""
        part = table.filter(pc.equal(table.column("_piece"), key))
        expected = part.column("_piece_rows")[0].as_py()
        if len(part) != expected:
            raise RuntimeError(f"piece {key} reached the writer split ({len(part)} of {expected} rows)")
        good = pc.is_null(part.column("_error"))
        kept, bad = part.filter(good), part.filter(pc.invert(good))
        vectors = pa.table({self.id_column: kept.column("id"), "embedding": kept.column("embedding")},
                           metadata=self.metadata)
        errors = [
            {"id": row["id"], "where": row["_where"], "error": row["_error"]}
            for row in bad.select(["id", "_where", "_error"]).to_pylist()
        ]
        stats = {"rows": len(kept), "errors": len(errors), "tokens": int(pc.sum(kept.column("_tokens")).as_py() or 0)}
        self.store.commit_piece(key, vectors, errors, stats)
        return {"piece": key, **stats}
