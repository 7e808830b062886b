"""The embed job's index: a LanceDB table equal to the committed vectors, the same table after a kill -9 during
indexing, exact top-1 search, the `raylib search` command, and bad index: sections refused before any work."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from raylib.cli import main
from raylib.config import ConfigError, EmbedJobConfig, IndexConfig
from raylib.embed.index import SearchIndex, ann_settings, build_ann_index, connect, open_index
from raylib.embed.run import run_embed
from raylib.embed.search import top_k_exact
from raylib.embed.vectors import read_floats
from tests.conftest import BIN, ROOT, write_jsonl

# run in a subprocess: the embed job, with its index step held after the first piece, until the test kills it
HELD_JOB = """
import sys, time
from raylib.config import EmbedJobConfig
from raylib.embed import index
from raylib.embed.run import run_embed

piece_table, calls = index._piece_table, []

def held(*args):
    calls.append(1)
    if len(calls) == 2:  # Lance has the first piece's rows and waits for more: nothing of this write committed
        print("indexing", flush=True)
        time.sleep(600)
    return piece_table(*args)

index._piece_table = held
run_embed(EmbedJobConfig.model_validate_json(sys.argv[1]))
"""


def kill_9_while_indexing(config: EmbedJobConfig, ray_address: str) -> None:
    """Run the embed job in a subprocess and kill -9 it once its index step is writing the table."""
    job = subprocess.Popen([sys.executable, "-c", HELD_JOB, config.model_dump_json()], cwd=ROOT,
                           env={**os.environ, "RAY_ADDRESS": ray_address}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    output = []
    for line in job.stdout:
        output.append(line)
        if line.strip() == "indexing":
            break
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert output and output[-1].strip() == "indexing", "".join(output)
    time.sleep(2.5)  # its output lease goes stale: the next run may take over


def job_config(root, **index) -> EmbedJobConfig:
    return EmbedJobConfig.model_validate({
        "input": {"path": str(root / "in"), "bytes_per_piece": 8_000},
        "output": {"path": str(root / "out"), "lease_timeout_s": 2},
        "compute": {"actors": 2, "cpus_per_actor": 0.75, "threads_per_actor": 1},
        "index": {"path": str(root / "db"), "columns": ["text"], **index},
    })


def committed(config: EmbedJobConfig) -> dict:
    """id -> float vector of the embed output (int8/binary as read_floats reads them)."""
    table = pads.dataset(config.output.path, format="parquet").to_table()
    return dict(zip(table.column("id").to_pylist(), read_floats(table)))


def indexed(config: EmbedJobConfig) -> dict:
    """id -> (vector, text) of the index table; fails when an id is there twice."""
    table = open_index(config.index.path).table.to_arrow()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id is in the table twice"
    vectors = np.array(table.column("embedding").to_pylist(), np.float32)
    return dict(zip(ids, zip(vectors, table.column("text").to_pylist())))


def assert_table_is_the_output(config: EmbedJobConfig, rows: list[dict]) -> None:
    table, vectors = indexed(config), committed(config)
    assert sorted(table) == sorted(vectors) == sorted(row["id"] for row in rows)
    assert all(np.array_equal(table[doc_id][0], vectors[doc_id]) for doc_id in vectors)
    assert all(table[row["id"]][1] == row["text"] for row in rows)


@pytest.fixture(scope="module")
def ann_job(ray_session, tmp_path_factory, documents):
    """(config, summary, rows) of an embed job over 260 documents whose index is IVF-PQ (exact_below 0; PQ
    trains 256 codes per sub-vector)."""
    root = tmp_path_factory.mktemp("ann")
    rows = documents[:260]
    for shard in range(2):
        write_jsonl(root / "in" / f"shard-{shard}.jsonl", rows[shard::2])
    config = job_config(root, kind="ivf_pq", exact_below=0, num_partitions=4, num_sub_vectors=24)
    return config, run_embed(config), rows


def test_the_index_holds_the_committed_vectors_and_the_model_settings(ann_job):
    config, summary, rows = ann_job
    assert "indexed rows=260 index=ivf_pq (written)" in summary.line()
    assert_table_is_the_output(config, rows)
    index = open_index(config.index.path)
    assert index.settings["kind"] == "ivf_pq" and index.table.list_indices()[0].index_type == "IvfPq"
    assert index.record["model"] | {"path": "bundled", "pooling": "mean", "dimensions": 384, "max_length": 256,
                                    "query_prefix": "", "normalize": True} == index.record["model"]
    assert (index.record["input_type"], index.record["text_column"]) == ("document", "text")

    again = run_embed(config)
    assert "indexed rows=260 index=ivf_pq (up to date)" in again.line()


def test_search_finds_each_document_by_its_own_text_as_exact_search_does(ann_job, embedder):
    config, _, rows = ann_job
    index = open_index(config.index.path)
    vectors = committed(config)
    ids = list(vectors)
    texts = [row["text"] for row in rows]
    asked = [row for row in rows[::15] if texts.count(row["text"]) == 1]
    found = index.search([row["text"] for row in asked], top=3)
    _, exact = top_k_exact(embedder.encode([row["text"] for row in asked], input_type="query"),
                           np.stack(list(vectors.values())), 1)
    assert [result.column("id")[0].as_py() for result in found] == [row["id"] for row in asked]
    assert [ids[row[0]] for row in exact] == [row["id"] for row in asked]
    assert all(abs(result.column("score")[0].as_py() - 1) < 1e-3 for result in found)

    target = asked[0]["id"]  # filtered out: the next three of exact search come back
    (filtered,) = index.search([asked[0]["text"]], top=3, where=f"id != '{target}'")
    _, exact = top_k_exact(embedder.encode([asked[0]["text"]], input_type="query"), np.stack(list(vectors.values())), 4)
    assert filtered.column("id").to_pylist() == [ids[row] for row in exact[0][1:]]


def test_a_rerun_after_kill_9_during_indexing_leaves_each_id_once(ray_session, tmp_path, documents):
    rows = documents[300:330]
    for shard in range(3):
        write_jsonl(tmp_path / "in" / f"shard-{shard}.jsonl", rows[shard::3])
    config = job_config(tmp_path, columns=[])
    config.input.bytes_per_piece = 4_000  # a few pieces per file: the index step is held after the first
    config.output.dtype = "binary"  # the table holds the floats the sign bits stand for
    run_embed(config)
    before = open_index(config.index.path).table.to_arrow()
    assert before.column_names == ["id", "embedding"] and len(before) == 30

    with_text = config.model_copy(deep=True)
    with_text.index.columns = ["text"]  # the next run re-writes the table (no embedding: the output is done)
    first_write = with_text.model_copy(deep=True)
    first_write.index.path = str(tmp_path / "db-first")  # a table's first write, killed before it has a version
    kill_9_while_indexing(with_text, ray_session)
    kill_9_while_indexing(first_write, ray_session)
    assert open_index(config.index.path).table.to_arrow() == before  # the version before the kill
    with pytest.raises(ConfigError, match="no table 'documents'"):
        open_index(first_write.index.path)

    for rerun in (with_text, first_write):
        assert "indexed rows=30 index=exact (written)" in run_embed(rerun).line()
        assert_table_is_the_output(rerun, rows)


def test_the_search_command_prints_ranked_ids_scores_and_text(ann_job, capsys):
    config, _, rows = ann_job
    texts = [row["text"] for row in rows]
    row = next(row for row in rows[7:] if texts.count(row["text"]) == 1)
    query = row["text"]
    done = subprocess.run([str(BIN / "raylib"), "search", "--index", config.index.path, "--query", query,
                           "--top", "3"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"query: {query}\n")
    lines = done.stdout.strip().splitlines()[-3:]
    first_line = next(line.strip() for line in query.splitlines() if line.strip())[:100]
    assert [line.split()[0] for line in lines] == ["1.", "2.", "3."]
    assert lines[0].split()[1:3] == ["1.000", row["id"]] and lines[0].endswith(first_line)

    assert main(["search", "--index", config.index.path, "--query", "x", "--filter", "id = = 1"]) == 2
    assert main(["search", "--index", config.index.path + "-missing", "--query", "x"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and errors[0].startswith("error: --filter: ") and "no table 'documents'" in errors[1]


@pytest.mark.parametrize("index, message", [
    ("{path: DB, num_sub_vectors: 7}", "index.num_sub_vectors: 7 does not divide the model's 384 dimensions"),
    ("{path: DB, columns: [title]}", "index.columns: ['title'] not in"),
    ("{path: DB, columns: [id]}", "index.columns: 'id' is the id column"),
    ("{path: DB, nprobe: 4}", "index.nprobe: unknown key; remove it or fix its spelling (allowed: path, table,"),
])
def test_a_bad_index_section_fails_before_any_work(tmp_path, documents, capsys, index, message):
    write_jsonl(tmp_path / "in" / "docs.jsonl", documents[:5])
    config = tmp_path / "embed.yaml"
    config.write_text(f"input: {{path: {tmp_path / 'in'}}}\noutput: {{path: {tmp_path / 'out'}}}\n"
                      f"index: {index.replace('DB', str(tmp_path / 'db'))}\n")
    assert main(["embed", "--config", str(config)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert message in line and str(config) in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "db").exists()


def test_the_default_index_finds_each_vectors_own_row(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((600, 32), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = connect(str(tmp_path / "db")).create_table("documents", data=pa.table({
        "id": np.arange(600), "embedding": pa.FixedSizeListArray.from_arrays(vectors.reshape(-1), 32)}))
    settings = ann_settings(IndexConfig(path=str(tmp_path / "db"), exact_below=0, num_partitions=4), len(vectors))
    build_ann_index(table, settings)
    assert settings["kind"] == "ivf_hnsw_sq" and table.list_indices()[0].index_type == "IvfHnswSq"
    found = SearchIndex(table, {}, settings).nearest(vectors[:50], 1)
    assert [result.column("id").to_pylist() for result in found] == [[row] for row in range(50)]


def test_an_index_in_a_bucket_is_reached_with_the_projects_uri_form(s3):
    endpoint, fs = s3
    fs.create_dir("indexes")
    uri = f"s3://testing:secret@indexes/db?endpoint_override={endpoint}&region=us-east-1"
    vectors = np.eye(4, dtype=np.float32)
    table = connect(uri).create_table("documents", data=pa.table({
        "id": ["a", "b", "c", "d"], "embedding": pa.FixedSizeListArray.from_arrays(vectors.reshape(-1), 4)}))
    build_ann_index(table, {"kind": "exact"})

    (found,) = SearchIndex(connect(uri).open_table("documents"), {}, {"kind": "exact"}).nearest(vectors[2:3], 1)
    assert found.column("id").to_pylist() == ["c"] and found.column("score").to_pylist() == [1.0]
    stored = fs.get_file_info(pafs.FileSelector("indexes/db", recursive=True))
    assert any(info.path.startswith("indexes/db/documents.lance/") for info in stored)
    with pytest.raises(ConfigError, match="was not written by the embed job"):
        open_index(uri)
