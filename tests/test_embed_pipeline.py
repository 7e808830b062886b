"""The batch-embedding pipeline on the session's local Ray: outputs, bad rows, resume, input pieces."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from raylib.config import ConfigError, EmbedJobConfig, InputConfig
from raylib.data.sources import list_input_files, plan_pieces, read_piece
from raylib.embed.run import run_embed
from tests.conftest import write_jsonl


def job_config(input_path, output_path, **sections) -> EmbedJobConfig:
    return EmbedJobConfig.model_validate({
        "input": {"path": str(input_path), **sections.pop("input", {})},
        "output": {"path": str(output_path), **sections.pop("output", {})},
        "compute": {"actors": 2, "cpus_per_actor": 0.75, "threads_per_actor": 1, "batch_tokens": 2048,
                    **sections.pop("compute", {})},
        **sections,
    })


def read_output(path) -> pa.Table:
    return pads.dataset(str(path), format="parquet").to_table()


def test_jsonl_corpus_is_embedded_exactly_once_with_the_embedders_vectors(ray_session, tmp_path, documents,
                                                                           embedder):
    rows = documents[:240]
    for shard in range(3):
        write_jsonl(tmp_path / "in" / f"shard-{shard}.jsonl", rows[shard::3])
    config = job_config(tmp_path / "in", tmp_path / "out", input={"bytes_per_piece": 8_000})
    summary = run_embed(config)

    assert (summary.rows, summary.errors, summary.skipped_pieces) == (240, 0, 0)
    assert summary.pieces >= 9  # several byte-range pieces per file
    assert summary.tokens > 240 * 20
    table = read_output(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(row["id"] for row in rows) and len(set(ids)) == len(ids)
    by_id = dict(zip(ids, np.array(table.column("embedding").to_pylist(), dtype=np.float32)))
    expected = embedder.encode([row["text"] for row in rows])
    got = np.stack([by_id[row["id"]] for row in rows])
    assert np.abs((got * expected).sum(1) - 1).max() < 1e-4
    assert "rows=240 errors=0" in summary.line() and f"output={tmp_path / 'out'}" in summary.line()

    again = run_embed(config)
    assert (again.rows, again.skipped_pieces) == (0, summary.pieces)
    assert len(read_output(tmp_path / "out")) == 240


def test_bad_parquet_rows_are_reported_and_good_rows_kept(ray_session, tmp_path, documents):
    texts = [doc["text"] for doc in documents[:40]]
    ids = list(range(40))
    ids[3] = None
    texts[5], texts[6], texts[7] = None, "", "   \n"
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"doc": pa.array(ids, pa.int64()), "body": texts}), tmp_path / "in" / "a.parquet",
                   row_group_size=8)
    config = job_config(tmp_path / "in", tmp_path / "out", input={"id_column": "doc", "text_column": "body",
                                                                  "rows_per_piece": 16},
                        output={"dtype": "float16"})
    summary = run_embed(config)

    assert (summary.rows, summary.errors, summary.pieces) == (36, 4, 3)
    table = read_output(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), 384)
    assert table.schema.field("doc").type == pa.int64()
    assert sorted(table.column("doc").to_pylist()) == [i for i in range(40) if i not in (3, 5, 6, 7)]
    errors = [json.loads(line) for path in sorted((tmp_path / "out" / "_errors").iterdir())
              for line in path.read_text().splitlines()]
    reasons = {error["where"].rsplit(" ", 1)[1]: error["error"] for error in errors}
    assert reasons == {"3": "id is missing or null", "5": "text is missing or null", "6": "text is empty",
                       "7": "text is empty"}


def test_bad_jsonl_lines_are_reported(ray_session, tmp_path):
    lines = ['{"id": "a", "text": "a fine document about parsing"}', "{not json", "[1, 2]", '{"id": "b"}',
             '{"id": "c", "text": 17}', '{"id": true, "text": "boolean id"}', '{"text": "no id here"}', "",
             '{"id": 7, "text": "integer ids become strings"}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    summary = run_embed(job_config(tmp_path / "in.jsonl", tmp_path / "out"))

    assert (summary.rows, summary.errors) == (2, 6)
    assert sorted(read_output(tmp_path / "out").column("id").to_pylist()) == ["7", "a"]
    (errors_file,) = (tmp_path / "out" / "_errors").iterdir()
    reasons = [json.loads(line)["error"] for line in errors_file.read_text().splitlines()]
    assert [reason.split(" (")[0] for reason in reasons] == [
        "line is not valid JSON", "line is not a JSON object", "text is missing or null",
        "text is a int, not a string", "id is a bool, not a string or integer", "id is missing or null"]


def test_output_made_with_other_settings_is_refused(ray_session, tmp_path, documents):
    write_jsonl(tmp_path / "in.jsonl", documents[:5])
    run_embed(job_config(tmp_path / "in.jsonl", tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"output.path: .* other settings \(model.dimensions\)"):
        run_embed(job_config(tmp_path / "in.jsonl", tmp_path / "out", model={"dimensions": 64}))


def test_byte_range_pieces_cover_every_line_once(tmp_path, documents):
    rows = documents[:50]
    write_jsonl(tmp_path / "in.jsonl", rows)
    for piece_bytes in (1, 7, 100, 333, 10_000_000):
        config = InputConfig(path=str(tmp_path / "in.jsonl"), bytes_per_piece=piece_bytes)
        fs, files = list_input_files(config)
        pieces = plan_pieces(fs, files, config)
        ids = [doc_id for piece in pieces for doc_id in read_piece(piece, config).column("id").to_pylist()]
        assert ids == [row["id"] for row in rows], piece_bytes


def test_parquet_pieces_group_whole_row_groups(tmp_path):
    pq.write_table(pa.table({"id": range(100), "text": ["t"] * 100}), tmp_path / "a.parquet", row_group_size=10)
    config = InputConfig(path=str(tmp_path), rows_per_piece=25)
    fs, files = list_input_files(config)
    pieces = plan_pieces(fs, files, config)
    assert [(p.start, p.stop) for p in pieces] == [(0, 20), (20, 40), (40, 60), (60, 80), (80, 100)]
    assert [len(read_piece(p, config)) for p in pieces] == [20] * 5


def test_the_piece_reader_over_no_pieces_is_an_empty_dataset(ray_session):
    from raylib.data.sources import read_pieces

    assert read_pieces([], 0.25).count() == 0
