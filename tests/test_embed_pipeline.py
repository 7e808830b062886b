"""The batch-embedding pipeline on the session's local Ray: outputs, bad rows, resume, input pieces."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from raylib.config import ConfigError, EmbedJobConfig, InputConfig
from raylib.data.sources import list_input_files, plan_pieces, read_piece
from raylib.embed.calibrate import MARKER
from raylib.embed.run import run_embed
from raylib.embed.store import OutputStore
from raylib.embed.vectors import METADATA_KEY, read_floats
from raylib.models.quantize import quantize
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


def test_int8_output_is_calibrated_once_and_every_piece_keeps_those_ranges(ray_session, tmp_path, documents,
                                                                           embedder):
    rows = documents[:96]
    for shard in range(2):
        write_jsonl(tmp_path / "in" / f"shard-{shard}.jsonl", rows[shard::2])
    config = job_config(tmp_path / "in", tmp_path / "out", input={"bytes_per_piece": 8_000},
                        output={"dtype": "int8", "calibration_rows": 40})
    summary = run_embed(config)

    assert (summary.rows, summary.errors) == (96, 0) and summary.pieces >= 4
    table = read_output(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.int8(), 384)
    described = json.loads(table.schema.metadata[METADATA_KEY])
    assert described["dtype"] == "int8" and described["dimensions"] == 384 and "floor" in described["scheme"]
    job = OutputStore(str(tmp_path / "out"))._read_json(str(tmp_path / "out" / "_manifest" / "_job.json"))
    made_with = described["made_with"]  # which model made the vectors and how, as _job.json records it
    assert {key: value for key, value in job.items() if key.startswith("model.")} == \
        {key: value for key, value in made_with.items() if key.startswith("model.")} and "model.files" in made_with
    assert made_with["input_type"] == "document" and made_with["raylib_version"]
    store = OutputStore(str(tmp_path / "out"))
    ranges = np.array(store.read_marker(MARKER), np.float32)
    np.testing.assert_array_equal(np.array(described["ranges"], np.float32), ranges)
    expected = embedder.encode([row["text"] for row in rows])
    # the ranges come from a sample of this input: inside its own min and max, narrower than all of it
    assert np.all(ranges[0] >= expected.min(0) - 1e-4) and np.all(ranges[1] <= expected.max(0) + 1e-4)
    assert np.any(ranges[0] > expected.min(0) + 1e-3)
    by_id = {doc_id: row for row, doc_id in enumerate(table.column("id").to_pylist())}
    order = [by_id[row["id"]] for row in rows]
    codes = np.array(table.column("embedding").to_pylist())[order]
    assert np.abs(codes - quantize(expected, "int8", ranges).astype(int)).max() <= 1  # floats agree to ~1e-5
    floats = read_floats(table)[order]
    step = (ranges[1] - ranges[0]) / 255
    inside = (expected >= ranges[0]) & (expected <= ranges[1])
    assert np.all(np.abs(floats - expected)[inside] <= np.broadcast_to(1.5 * step, expected.shape)[inside])
    assert (np.argmax(floats @ expected.T, axis=0) == np.arange(96)).all()  # each text finds itself

    # a re-run quantizes the pieces it (re-)embeds with the stored ranges, never calibrating again
    key = sorted(store.finished())[0]
    redone = store.read_vectors(key).column("id").to_pylist()
    store.remove_pieces({key})
    store.write_marker(MARKER, (ranges * 2).tolist())
    again = run_embed(config)
    assert again.rows == len(redone) and again.skipped_pieces == summary.pieces - 1
    piece = store.read_vectors(key)
    assert json.loads(piece.schema.metadata[METADATA_KEY])["ranges"] == (ranges * 2).tolist()
    position = {row["id"]: index for index, row in enumerate(rows)}
    indices = [position[doc_id] for doc_id in piece.column("id").to_pylist()]
    got = np.array(piece.column("embedding").to_pylist())
    assert np.abs(got - quantize(expected[indices], "int8", ranges * 2).astype(int)).max() <= 1


def test_binary_output_holds_packed_sign_bits(ray_session, tmp_path, documents, embedder):
    rows = documents[:24]
    write_jsonl(tmp_path / "in.jsonl", rows)
    summary = run_embed(job_config(tmp_path / "in.jsonl", tmp_path / "out", output={"dtype": "binary"}))

    assert summary.rows == 24 and not (tmp_path / "out" / "_manifest" / MARKER).exists()
    table = read_output(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.uint8(), 48)
    assert json.loads(table.schema.metadata[METADATA_KEY])["dtype"] == "binary"
    order = [table.column("id").to_pylist().index(row["id"]) for row in rows]
    bits = np.unpackbits(np.array(table.column("embedding").to_pylist(), np.uint8)[order], axis=1)
    expected = embedder.encode([row["text"] for row in rows])
    clear = np.abs(expected) > 1e-4  # signs of values this close to 0 may differ between processes
    np.testing.assert_array_equal(bits[clear], (expected > 0)[clear])
    floats = read_floats(table)[order]
    assert floats.shape == (24, 384) and (np.argmax(floats @ expected.T, axis=0) == np.arange(24)).all()


def test_outputs_of_unknown_dtypes_are_refused_by_readers():
    table = pa.table({"id": ["a"], "embedding": pa.array([[1, 2]], pa.list_(pa.int8(), 2))})
    with pytest.raises(ValueError, match="without raylib.embedding schema metadata"):
        read_floats(table)
    with pytest.raises(ValueError, match="'int4' is not one this version reads"):
        read_floats(table.replace_schema_metadata({METADATA_KEY: b'{"dtype": "int4", "dimensions": 4}'}))


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
    assert [(span.start, span.stop) for p in pieces for span in p.spans] == [(0, 20), (20, 40), (40, 60), (60, 80),
                                                                            (80, 100)]
    assert [len(read_piece(p, config)) for p in pieces] == [20] * 5


def test_the_piece_reader_over_no_pieces_is_an_empty_dataset(ray_session):
    from raylib.data.sources import read_pieces

    assert read_pieces([], 0.25).count() == 0
