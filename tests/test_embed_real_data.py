"""The embed job on the data a billion-row corpus holds: poison rows, unreadable files, any file layout, files
that change between runs, duplicate ids, concurrent runs. Real local Ray, real files, a tiny random model."""

import datetime
import decimal
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data
from transformers import BertConfig, BertModel

from raylib.config import ConfigError, EmbedJobConfig, InputConfig, job_main
from raylib.data import sources
from raylib.data.pairs import read_pairs_piece
from raylib.data.sources import UnreadableInput, list_input_files, plan_input, plan_pieces, read_piece, read_pieces
from raylib.data.tokens import text_tokens
from raylib.embed import unique
from raylib.embed.run import run_embed
from raylib.embed.store import OutputStore
from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_spec
from raylib.models.tokenizer import PromptTokenizer
from tests.conftest import ROOT, copy_bundled_tokenizer, write_jsonl
from tests.test_embed_pipeline import job_config

DEEP = '{"id": "deep", "text": "deep", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
POISON_LINES = [
    '{"id": "good-1", "text": "a fine document"}',
    '{"id": "huge", "text": "huge number", "n": ' + "9" * 5000 + "}",
    DEEP,
    '{"id": "s-text", "text": "broken \\ud83d emoji"}',
    '{"id": "\\ud83d", "text": "broken id"}',
    '{"id": "good-2", "text": "another fine document"}',
]
POISON_REASONS = ["line is not valid JSON", "line is nested too deeply to parse",
                  "text holds a lone surrogate '\\ud83d' at character 7",
                  "id holds a lone surrogate '\\ud83d' at character 0"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 1-layer BERT with the bundled tokenizer: the platform's overhead shows, not the model's."""
    directory = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    copy_bundled_tokenizer(directory)
    return directory


def tiny_job(input_path, output_path, model, **sections) -> EmbedJobConfig:
    return job_config(input_path, output_path, model={"path": str(model), **sections.pop("model", {})},
                      compute={"actors": 1, "cpus_per_actor": 1}, **sections)


def error_reports(output) -> list[dict]:
    return [json.loads(line) for path in sorted((output / "_errors").glob("*.jsonl")) for line in
            path.read_text().splitlines()]


def output_ids(output, column="id") -> list:
    return [value for path in sorted(output.glob("*.parquet"))
            for value in pq.read_table(path, columns=[column]).column(column).to_pylist()]


def test_poison_rows_are_bad_rows_and_the_job_goes_on(ray_session, tmp_path, tiny_model):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "poison.jsonl").write_text("\n".join(POISON_LINES) + "\n")
    id_types = {"binary": pa.array([b"\x00\xff-a", b"b", b"c"], pa.binary()),
                "timestamp": pa.array([datetime.datetime(2026, 1, 1, hour) for hour in range(3)], pa.timestamp("s")),
                "decimal": pa.array([decimal.Decimal("1.50"), decimal.Decimal("2"), decimal.Decimal("3")],
                                    pa.decimal128(10, 2))}
    for name, ids in id_types.items():
        pq.write_table(pa.table({"id": ids, "text": [None, "fine text", "more fine text"]}),
                       tmp_path / "in" / f"{name}.parquet")
    raw_text = pa.array([b"valid text", b"bad \xff byte"], pa.binary()).view(pa.string())  # parquet keeps it
    pq.write_table(pa.table({"id": ["u0", "u1"], "text": raw_text}), tmp_path / "in" / "utf8.parquet")

    summary = run_embed(tiny_job(tmp_path / "in", tmp_path / "out", tiny_model))

    assert (summary.rows, summary.errors, summary.unreadable) == (2 + 2 * 3 + 1, 4 + 3 + 1, {})
    reports = error_reports(tmp_path / "out")
    jsonl_reasons = [report["error"] for report in reports if "poison.jsonl" in report["where"]]
    assert [reason.split(" (")[0] for reason in jsonl_reasons] == ["line is not valid JSON"] + POISON_REASONS[1:]
    assert "digits" in jsonl_reasons[0]
    parquet_reports = {report["where"].split("/")[-1]: report for report in reports if ".parquet" in report["where"]}
    assert {where: report["id"] for where, report in parquet_reports.items()} == {
        "binary.parquet row 0": "\x00\\xff-a", "timestamp.parquet row 0": "2026-01-01 00:00:00",
        "decimal.parquet row 0": "1.50", "utf8.parquet row 1": "u1"}
    assert parquet_reports["utf8.parquet row 1"]["error"] == "text is not valid UTF-8 (byte 4)"
    kept = {type(value).__name__ for value in output_ids(tmp_path / "out")}
    assert kept == {"str", "bytes", "datetime", "Decimal"}  # each file's ids keep their type


def test_training_readers_report_poison_rows(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [line.replace('"text"', '"query"').replace('"id"', '"document"') for line in POISON_LINES]
    lines.append('{"query": "q", "document": "d", "negatives": ["fine", "bad \\udc00 negative"]}')
    path.write_text("\n".join(lines) + "\n")
    (piece,) = plan_pieces(*list_input_files(InputConfig(path=str(path), id_column=None, text_column="query")),
                           InputConfig(path=str(path), id_column=None, text_column="query"))
    pairs = read_pairs_piece(piece, str(path), "query", "document", "negatives", hard_negatives=1)
    reasons = pairs.column("_error").to_pylist()
    no_negatives = "negatives is a NoneType, not a list of texts"
    assert [reason.split(" (")[0] for reason in reasons[:6]] == [
        no_negatives, "line is not valid JSON", "line is nested too deeply to parse",
        "query holds a lone surrogate '\\ud83d' at character 7",
        "document holds a lone surrogate '\\ud83d' at character 0", no_negatives]
    assert reasons[6] == "negatives holds a lone surrogate '\\udc00' at character 4"

    text_path = tmp_path / "text.jsonl"
    text_path.write_text("\n".join(POISON_LINES) + "\n")
    config = InputConfig(path=str(text_path), id_column=None)
    (piece,) = plan_pieces(*list_input_files(config), config)
    tokens = text_tokens(piece, config, PromptTokenizer.from_spec(resolve_spec()))
    assert [reason is None for reason in tokens.column("_error").to_pylist()] == [True, False, False, False, True,
                                                                                   True]


def test_unreadable_files_are_reported_the_rest_embedded_and_the_exit_code_says_so(ray_session, tmp_path,
                                                                                     tiny_model, capsys):
    source = tmp_path / "in"
    source.mkdir()
    table = pa.table({"id": [f"d{i}" for i in range(300)], "text": [f"document number {i}" for i in range(300)]})
    pq.write_table(table, source / "good.parquet", row_group_size=100)
    data = (source / "good.parquet").read_bytes()
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(100)], "text": [f"page {i}" for i in range(100)]}),
                   tmp_path / "pages.parquet")
    (source / "empty.parquet").write_bytes(b"")
    (source / "text.parquet").write_text("id,text\n1,not parquet\n")
    (source / "truncated.parquet").write_bytes(data[:-100])
    corrupt = bytearray((tmp_path / "pages.parquet").read_bytes())
    corrupt[200:1500] = b"\x07" * 1300  # the footer is fine, the pages are not: fails while reading the piece
    (source / "pages.parquet").write_bytes(bytes(corrupt))
    config = tmp_path / "embed.yaml"
    config.write_text(json.dumps({"input": {"path": str(source), "rows_per_piece": 100},
                                  "output": {"path": str(tmp_path / "out")}, "model": {"path": str(tiny_model)},
                                  "compute": {"actors": 1, "cpus_per_actor": 1}}))

    for _ in range(2):  # a re-run reports them again and skips the good pieces
        assert job_main("embed", EmbedJobConfig, run_embed, ["--config", str(config)]) == 3
        out = capsys.readouterr().out
        assert "finished with unreadable inputs: 4" in out
    assert sorted(output_ids(tmp_path / "out")) == sorted(table.column("id").to_pylist())
    reports = {path.name.split("-")[0]: json.loads(path.read_text())
               for path in (tmp_path / "out" / "_errors").glob("*.unreadable.jsonl")}
    assert sorted(reports) == ["empty", "pages", "text", "truncated"]
    assert "size is 0 bytes" in reports["empty"]["error"] and "magic bytes" in reports["text"]["error"]
    assert "pages.parquet" in reports["pages"]["where"]


def test_a_million_rows_in_one_row_group_embed_whole(ray_session, tmp_path, tiny_model):
    rows = 1_000_000
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": pa.array(np.arange(rows)), "text": [f"t {i % 1000}" for i in range(rows)]}),
                   tmp_path / "in" / "big.parquet", row_group_size=rows)
    summary = run_embed(tiny_job(tmp_path / "in", tmp_path / "out", tiny_model, input={"rows_per_piece": 65536}))

    assert (summary.rows, summary.errors, summary.pieces) == (rows, 0, 16)
    ids = np.array(output_ids(tmp_path / "out"))
    assert len(ids) == rows and np.array_equal(np.sort(ids), np.arange(rows))


def test_pieces_are_bounded_by_rows_whatever_the_layout(tmp_path):
    write_jsonl(tmp_path / "short.jsonl", [{"id": i, "text": "x"} for i in range(5000)])
    pq.write_table(pa.table({"id": range(1000), "text": ["t"] * 1000}), tmp_path / "one-group.parquet",
                   row_group_size=1000)
    config = InputConfig(path=str(tmp_path), rows_per_piece=300, bytes_per_piece=1_000_000)
    plan = plan_input(*list_input_files(config), config)
    by_file = {}
    for piece in plan.pieces:
        table = read_piece(piece, config)
        assert len(table) <= 300
        (span,) = piece.spans
        by_file.setdefault(span.uri.rsplit("/", 1)[1], []).extend(table.column("id").to_pylist())
    assert by_file["short.jsonl"] == [str(i) for i in range(5000)]
    assert by_file["one-group.parquet"] == list(range(1000))
    assert [(p.spans[0].start, p.spans[0].stop) for p in plan.pieces if p.format == "parquet"] == \
        [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert len(plan_input(*list_input_files(config), config, max_rows=100).pieces) == 10 + 50  # an output bound


def test_many_files_are_planned_at_once_in_file_order_with_the_unreadable_listed(tmp_path):
    for index in range(80):  # more files than planning threads
        if index == 41:
            (tmp_path / f"f{index:03d}.parquet").write_bytes(b"not parquet")
        else:
            write_jsonl(tmp_path / f"f{index:03d}.jsonl", [{"id": f"{index}-{row}", "text": "x"} for row in range(3)])
    config = InputConfig(path=str(tmp_path), rows_per_piece=2)
    plan = plan_input(*list_input_files(config), config)
    assert [span.uri.rsplit("/", 1)[1] for piece in plan.pieces for span in piece.spans] == \
        [f"f{index:03d}.jsonl" for index in range(80) if index != 41 for _ in range(2)]
    assert [path.rsplit("/", 1)[1] for path, _ in plan.unreadable] == ["f041.parquet"]


def test_small_files_are_grouped_in_file_order_and_a_change_regroups_only_its_neighbours(tmp_path, monkeypatch):
    for index in range(600):
        write_jsonl(tmp_path / f"f{index:03d}.jsonl", [{"id": f"{index}-{row}", "text": "x"} for row in range(2)])
    write_jsonl(tmp_path / "f300-big.jsonl", [{"id": f"big-{row}", "text": "x"} for row in range(500)])
    for index in range(3):
        pq.write_table(pa.table({"id": [f"p{index}"], "text": ["y"]}), tmp_path / f"g{index}.parquet")
    config = InputConfig(path=str(tmp_path), rows_per_piece=200, bytes_per_piece=6000)
    plan = plan_input(*list_input_files(config), config)
    ids, groups = [], 0
    for piece in plan.pieces:
        table = read_piece(piece, config)
        assert len(table) <= 200 and (len(piece.spans) == 1 or sum(Path(span.uri).stat().st_size
                                                                    for span in piece.spans) <= 6000)
        assert len({span.format for span in piece.spans}) == 1  # parquet and jsonl files are never mixed
        assert [where.rsplit(" ", 2)[0] for where in table.column("_where").to_pylist()][-1] == piece.spans[-1].uri
        ids += table.column("id").to_pylist()
        groups += len(piece.spans) > 1
    expected = [f"{index}-{row}" for index in range(300) for row in range(2)]  # f300-big.jsonl sorts before f300
    expected += [f"big-{row}" for row in range(500)] + [f"{index}-{row}" for index in range(300, 600) for row in range(2)]
    assert ids == expected + ["p0", "p1", "p2"]  # every row once, in file order
    assert len(plan.pieces) < 30 and groups >= 7  # 604 files: the big one cut in 3 by rows, the small ones grouped
    assert len(plan_input(*list_input_files(config), config.model_copy(update={"group_small_files": False})).pieces) \
        == 603 + 3

    # one file goes away, one is added (between f449 and f450): only the groups of their runs between two group
    # boundaries (set by the paths' digests; one every ~32 files here, so that 600 files have many) change
    monkeypatch.setattr(sources, "GROUP_FILES", 32)
    before = plan_input(*list_input_files(config), config).pieces
    run_of, run, deleted_starts_a_run = {}, 0, False
    for file in list_input_files(config)[1]:
        run += sources._starts_group(file)
        run_of[file.path] = run
        deleted_starts_a_run |= file.path == str(tmp_path / "f123.jsonl") and sources._starts_group(file)
    deleted_run = run_of[str(tmp_path / "f123.jsonl")]
    changed = {deleted_run, run_of[str(tmp_path / "f449.jsonl")]}
    if deleted_starts_a_run:  # (1 in 32, by the temporary path's digest) its run then merges into the one before
        changed.add(deleted_run - 1)
    (tmp_path / "f123.jsonl").unlink()
    write_jsonl(tmp_path / "f450-new.jsonl", [{"id": "new", "text": "x"}])
    again = {piece.key for piece in plan_input(*list_input_files(config), config).pieces}
    unchanged = [piece.key for piece in before if run_of[piece.spans[0].uri] not in changed]
    assert len(unchanged) > len(before) / 2 and set(unchanged) <= again


def test_lines_end_at_newlines_only_and_underscore_files_are_not_hidden(tmp_path):
    (tmp_path / "_data.jsonl").write_bytes(b'{"id": 1,\r"text": "a carriage return inside"}\r\n{"id": 2, "text": "b"}')
    config = InputConfig(path=str(tmp_path / "_data.jsonl"))
    (piece,) = plan_pieces(*list_input_files(config), config)
    table = read_piece(piece, config)
    assert table.column("id").to_pylist() == ["1", "2"] and table.column("_error").to_pylist() == [None, None]
    assert not piece.key.startswith("_")  # names starting with "_" are hidden from the manifest and readers


def test_a_piece_reaches_the_next_stage_as_one_block(ray_session, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": "y" * 1000} for i in range(4000)])  # ~4 MB of text
    config = InputConfig(path=str(tmp_path / "in.jsonl"), rows_per_piece=10_000, bytes_per_piece=10_000_000)
    context = ray.data.DataContext.get_current()
    limit, context.target_max_block_size = context.target_max_block_size, 1 << 20  # Ray Data would cut at 1 MiB
    try:
        blocks = read_pieces(plan_pieces(*list_input_files(config), config), 0.25, config=config).map_batches(
            lambda table: pa.table({"rows": [len(table)]}), batch_size=None, batch_format="pyarrow").take_all()
    finally:
        context.target_max_block_size = limit
    assert blocks == [{"rows": 4000}]


def test_files_that_change_between_runs_are_embedded_exactly_once(ray_session, tmp_path, tiny_model):
    source = tmp_path / "in"
    write_jsonl(source / "a.jsonl", [{"id": f"a{i}", "text": f"alpha {i}"} for i in range(30)])
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(30)], "text": [f"beta {i}" for i in range(30)]}),
                   source / "b.parquet", row_group_size=10)
    config = tiny_job(source, tmp_path / "out", tiny_model, input={"bytes_per_piece": 400})
    run_embed(config)

    with open(source / "a.jsonl", "a") as handle:  # appended
        handle.write("".join(json.dumps({"id": f"a{i}", "text": f"alpha {i}"}) + "\n" for i in range(30, 35)))
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(33)], "text": [f"beta {i}" for i in range(33)]}),
                   source / "b.parquet", row_group_size=7)  # rewritten, re-chunked, grown
    summary = run_embed(config)
    assert summary.removed_pieces > 0 and summary.duplicates == []
    expected = [f"a{i}" for i in range(35)] + [f"b{i}" for i in range(33)]
    assert sorted(output_ids(tmp_path / "out")) == sorted(expected)

    (source / "a.jsonl").unlink()  # gone
    run_embed(config)
    assert sorted(output_ids(tmp_path / "out")) == sorted(f"b{i}" for i in range(33))


def test_a_file_changed_after_planning_is_unreadable_not_misread(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": "x"} for i in range(10)])
    config = InputConfig(path=str(tmp_path / "in.jsonl"))
    (piece,) = plan_pieces(*list_input_files(config), config)
    write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": "x"} for i in range(11)])
    with pytest.raises(UnreadableInput, match="changed after the job planned"):
        read_piece(piece, config)


def test_a_model_republished_at_the_same_path_is_refused(ray_session, tmp_path, tiny_model):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "alpha"}])
    run_embed(tiny_job(tmp_path / "in.jsonl", tmp_path / "out", model))
    for path in model.iterdir():  # copied again (new modification times, same files): still the same model
        os.utime(path, (time.time() + 10, time.time() + 10))
    assert run_embed(tiny_job(tmp_path / "in.jsonl", tmp_path / "out", model)).skipped_pieces == 1
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(model)  # new weights, same path
    with pytest.raises(ConfigError, match=r"other settings \(model.files\)"):
        run_embed(tiny_job(tmp_path / "in.jsonl", tmp_path / "out", model))


def test_duplicate_ids_are_kept_once_first_by_input_order(ray_session, tmp_path, tiny_model):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": f"id{i}", "text": f"first {i}"} for i in range(10)]
                + [{"id": "id3", "text": "a repeat inside the same file"}])
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": f"id{i}", "text": f"second {i}"} for i in range(5, 15)])
    config = tiny_job(tmp_path / "in", tmp_path / "out", tiny_model, input={"bytes_per_piece": 100})
    summary = run_embed(config)

    assert len(summary.duplicates) == 6 and "duplicate ids: 6" in summary.line()
    table = pa.concat_tables(pq.read_table(path) for path in sorted((tmp_path / "out").glob("*.parquet")))
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(f"id{i}" for i in range(15))
    vectors = dict(zip(ids, np.array(table.column("embedding").to_pylist())))
    embedder = Embedder(resolve_spec(str(tiny_model)))
    expected = embedder.encode(["first 3", "first 7", "second 12"])
    assert np.allclose(np.stack([vectors["id3"], vectors["id7"], vectors["id12"]]), expected, atol=1e-5)
    reported = [report for report in error_reports(tmp_path / "out") if report["error"].startswith("duplicate")]
    assert sorted(report["id"] for report in reported) == ["id3"] + [f"id{i}" for i in range(5, 10)]

    again = run_embed(config)
    assert (again.rows, again.duplicates) == (0, [])
    assert len(output_ids(tmp_path / "out")) == 15

    (tmp_path / "in" / "a.jsonl").unlink()  # the first holders go away: b's rows of those ids come back
    run_embed(config)
    assert sorted(output_ids(tmp_path / "out")) == sorted(f"id{i}" for i in range(5, 15))


def test_duplicate_ids_are_found_alike_in_the_driver_and_in_ray_tasks(ray_session, tmp_path, monkeypatch):
    store = OutputStore(str(tmp_path / "out"))
    pieces = {f"p{index}": ids for index, ids in enumerate([["a", "b"], ["c", "g"], ["b", "d"], ["g", "e"], ["e", "a"]])}
    for key, ids in pieces.items():
        store.commit_piece(key, pa.table({"id": ids}), [], {"rows": len(ids)})
    keys = list(pieces)
    in_driver = np.sort(unique._candidate_orders(store, "id", keys, 10, cpus=0.5))
    monkeypatch.setattr(unique, "PIECES_PER_TASK", 2)  # three map tasks and a reducing one
    in_tasks = np.sort(unique._candidate_orders(store, "id", keys, 10, cpus=0.5))
    repeated = {(0, 0), (4, 1), (0, 1), (2, 0), (1, 1), (3, 0), (3, 1), (4, 0)}  # (piece rank, row) of a, b, g, e
    assert {(int(order >> 32), int(order & 0xFFFFFFFF)) for order in in_driver} == repeated
    assert in_tasks.tolist() == in_driver.tolist()


def test_a_second_run_on_the_same_output_is_refused_until_the_first_dies(ray_session, tmp_path, tiny_model):
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "alpha"}])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from raylib.embed.store import OutputStore\n"
         "with OutputStore(sys.argv[1]).lease(2.0):\n    print('held', flush=True); time.sleep(600)",
         str(tmp_path / "out")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        config = tiny_job(tmp_path / "in.jsonl", tmp_path / "out", tiny_model, output={"lease_timeout_s": 2.0})
        time.sleep(3)  # its heartbeat keeps the lease fresh
        with pytest.raises(ConfigError, match=r"output.path: .* is being written by another run \(host .*, pid "
                                              rf"{holder.pid}"):
            run_embed(config)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    time.sleep(2.5)
    assert run_embed(config).rows == 1  # the dead run's lease is taken over
    assert not (tmp_path / "out" / "_lease.json").exists()
