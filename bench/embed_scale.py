"""How the embed job's own cost grows with the input: a tiny random model (so the model costs almost nothing and
the platform's overhead shows), synthetic short texts, each job run as a user runs it (`python jobs/embed.py`,
a process of its own). Prints one JSON object.

    python bench/embed_scale.py [--base-rows 20000] [--files 10000]

Figures:
  startup        a 10-row job on embedded Ray, command to exit (Ray's start included), and the same job joining a
                 running Ray (the baseline the scale runs subtract)
  scale          1x, 4x, 16x base rows in parquet files of rows_per_piece rows (one piece each), joining one running
                 Ray: wall seconds, seconds after start-up, their growth against linear, driver peak RSS (VmHWM),
                 machine CPU-seconds per piece (all processes: on a quiet machine, the job's)
  small_files    --files jsonl files of 2 rows: planning seconds (plan_input in this process), the job's wall
                 seconds, a re-run with every piece done (planning included), pieces
  resume_pieces  the same files as one piece each (group_small_files off): the job run on the first file alone
                 (it claims the output), every other file's piece then committed here as the job commits it (a
                 first run of 10,000 pieces would take ~1,000 s), the job run twice more: the first of those
                 checks the new pieces' ids for duplicates, the second has nothing at all to do (the figure)
  manifest       listing a manifest of 10,000 finished pieces (what a resume reads of the output)
  actor_share    the model actor's call on a tokenised piece of the sample corpus with the bundled model, in this
                 process: the share of its time that is not the model's forward passes (arrow in and out, batching,
                 the output's encoding); Ray's own per-call cost (moving the block) is not in it

Targets (issue 23, this machine): 16x rows <= 17.6x the 1x time after start-up; driver peak RSS at 16x <= 1.2x
that at 1x; planning 10,000 files <= 30 s; a resume with every piece done <= 10 s for 10,000 pieces; 10,000
two-row files <= 200 s beyond start-up; start-up (10-row job, command to exit) <= 12 s; the platform's share of a
model actor's time <= 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from pathlib import Path

# the Ray this script starts and the jobs that join it share a token (Ray reads these when imported)
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
from job_runs import cpu_model, run_job, tiny_model  # noqa: E402  (bench/)

from raylib.config import ComputeConfig, EmbedderConfig, InputConfig  # noqa: E402
from raylib.data.sample_corpus import sample_documents  # noqa: E402
from raylib.data.sources import list_input_files, plan_input  # noqa: E402
from raylib.data.tokens import TOKENS, token_column  # noqa: E402
from raylib.embed.actor import EmbedActor  # noqa: E402
from raylib.embed.store import OutputStore  # noqa: E402
from raylib.models.spec import resolve_spec  # noqa: E402
from raylib.models.tokenizer import PromptTokenizer  # noqa: E402

ROWS_PER_PIECE = 2500
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def busy_cpu_seconds() -> float:
    """CPU-seconds the whole machine has spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def text(row: int) -> str:
    return " ".join(WORDS[(row * 7 + word) % len(WORDS)] for word in range(8))


def write_parquet_corpus(directory: Path, rows: int) -> Path:
    directory.mkdir(parents=True)
    for start in range(0, rows, ROWS_PER_PIECE):
        ids = range(start, min(start + ROWS_PER_PIECE, rows))
        pq.write_table(pa.table({"id": [f"r{row}" for row in ids], "text": [text(row) for row in ids]}),
                       directory / f"part-{start // ROWS_PER_PIECE:05d}.parquet")
    return directory


def write_small_files(directory: Path, files: int) -> Path:
    directory.mkdir(parents=True)
    for index in range(files):
        lines = (json.dumps({"id": f"f{index}-{row}", "text": text(index + row)}) for row in range(2))
        (directory / f"doc-{index:06d}.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def run_embed_job(config: Path, env: dict) -> dict:
    """Run `python jobs/embed.py --config <config>`: wall seconds, the driver's peak RSS, machine CPU-seconds and
    the summary's figures."""
    cpu = busy_cpu_seconds()
    run = run_job("jobs/embed.py", config, env, "embedded ")
    figures = run["figures"]
    return {"wall_s": round(run["wall_s"], 2), "driver_peak_rss_mb": run["driver_peak_rss_mb"],
            "machine_cpu_s": round(busy_cpu_seconds() - cpu, 2), "rows": int(figures["rows"]),
            "pieces": int(figures["pieces"]), "skipped": int(figures["skipped"]),
            "job_seconds": float(figures["seconds"]), "embed_seconds": float(figures["embed_seconds"])}


def write_config(path: Path, source: Path, output: Path, model: Path, group_small_files: bool = True) -> Path:
    path.write_text(json.dumps({
        "input": {"path": str(source), "rows_per_piece": ROWS_PER_PIECE, "group_small_files": group_small_files},
        "model": {"path": str(model)},
        "output": {"path": str(output)},
        "compute": {"actors": 1, "cpus_per_actor": 1, "threads_per_actor": 1},
    }))
    return path


def manifest_listing(scratch: Path, pieces: int = 10_000) -> dict:
    """Seconds to list a manifest of `pieces` finished pieces."""
    manifest = scratch / "manifest-only" / "_manifest"
    manifest.mkdir(parents=True)
    for index in range(pieces):
        (manifest / f"piece-{index:06d}.json").write_text('{"rows": 2}')
    started = time.perf_counter()
    found = OutputStore(str(manifest.parent)).finished()
    return {"pieces": len(found), "seconds": round(time.perf_counter() - started, 3)}


def resume_pieces(scratch: Path, files: Path, model: Path, env: dict) -> dict:
    """A resume of an output holding one finished piece per file of `files` (see the module's docstring)."""
    source = scratch / "one-piece-per-file"
    source.mkdir()
    names = sorted(path.name for path in files.iterdir())
    (source / names[0]).write_bytes((files / names[0]).read_bytes())
    config_path = write_config(scratch / "resume.json", source, scratch / "out-resume", model, group_small_files=False)
    first = run_embed_job(config_path, env)
    for name in names[1:]:
        (source / name).write_bytes((files / name).read_bytes())
    config = InputConfig(path=str(source), rows_per_piece=ROWS_PER_PIECE, group_small_files=False)
    store = OutputStore(str(scratch / "out-resume"))
    done = store.finished()
    started = time.perf_counter()
    for piece in plan_input(*list_input_files(config), config).pieces:
        if piece.key not in done:
            ids = [json.loads(line)["id"] for line in Path(piece.spans[0].uri).read_text().splitlines()]
            vectors = pa.table({"id": ids, "embedding": pa.array([[0.0] * 32] * len(ids), pa.list_(pa.float32(), 32))})
            store.commit_piece(piece.key, vectors, [], {"rows": len(ids), "errors": 0, "tokens": 0})
    committing = time.perf_counter() - started
    checking, nothing_to_do = run_embed_job(config_path, env), run_embed_job(config_path, env)
    return {"pieces": nothing_to_do["pieces"], "first_run_one_file_s": first["wall_s"],
            "committing_the_rest_here_s": round(committing, 1), "resume_checking_duplicates": checking,
            "resume_nothing_to_do": nothing_to_do}


def actor_share(rows: int, repeats: int = 3) -> dict:
    """Seconds of EmbedActor's call on one tokenised piece and of the model's forward passes alone (the best of
    `repeats` each); the rest is the platform's."""
    documents = sample_documents(rows)
    table = pa.table({"id": [doc["id"] for doc in documents], "text": [doc["text"] for doc in documents],
                      "_error": pa.nulls(rows, pa.string())})
    tokens = token_column(table, PromptTokenizer.from_spec(resolve_spec()))
    piece = pa.table({"id": table.column("id"), TOKENS: tokens})
    batch_tokens = ComputeConfig().batch_tokens  # the job's defaults: its batch size, one thread per actor
    actor = EmbedActor(EmbedderConfig().model_dump_json(), "document", batch_tokens, threads=1)
    sequences = [list(ids) for ids in tokens.to_pylist()]

    def seconds(call) -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    times = [(seconds(lambda: actor(piece)),
              seconds(lambda: actor.embedder.embed_tokens(sequences, batch_tokens, [actor.prompt_length] * rows)))
             for _ in range(repeats)]  # interleaved: the machine's drift hits both alike
    whole, model = min(call for call, _ in times), min(forward for _, forward in times)
    return {"rows": rows, "call_s": round(whole, 3), "model_s": round(model, 3),
            "platform_share": round(max(whole - model, 0.0) / whole, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-rows", type=int, default=20_000)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--actor-rows", type=int, default=1024)
    args = parser.parse_args()
    report: dict = {"cpu": cpu_model(), "cores": os.cpu_count(), "rows_per_piece": ROWS_PER_PIECE}
    with tempfile.TemporaryDirectory(prefix="embed-scale-") as scratch_name:
        scratch = Path(scratch_name)
        model = tiny_model(scratch / "tiny-bert")
        one_file = scratch / "ten-rows"
        one_file.mkdir()
        (one_file / "docs.jsonl").write_text("".join(json.dumps({"id": str(i), "text": text(i)}) + "\n"
                                                     for i in range(10)))
        embedded_env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        startup = {"embedded": run_embed_job(write_config(scratch / "s1.json", one_file, scratch / "s1", model),
                                       embedded_env)}

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
        startup["joining"] = run_embed_job(write_config(scratch / "s2.json", one_file, scratch / "s2", model), env)
        report["startup"] = startup
        base = startup["joining"]["wall_s"]

        scale = {}
        for factor in args.scales:
            source = write_parquet_corpus(scratch / f"rows-{factor}x", args.base_rows * factor)
            result = run_embed_job(write_config(scratch / f"x{factor}.json", source, scratch / f"out-{factor}x", model),
                             env)
            result["after_startup_s"] = round(result["wall_s"] - base, 2)
            result["machine_cpu_s_per_piece"] = round(result["machine_cpu_s"] / result["pieces"], 3)
            scale[f"{factor}x"] = result
        first = scale[f"{args.scales[0]}x"]
        for factor in args.scales[1:]:
            result, ratio = scale[f"{factor}x"], factor // args.scales[0]
            result["time_vs_linear"] = round(result["after_startup_s"] / (ratio * first["after_startup_s"]), 3)
            result["rss_vs_first"] = round(result["driver_peak_rss_mb"] / first["driver_peak_rss_mb"], 3)
        report["scale"] = scale

        source = write_small_files(scratch / "small-files", args.files)
        config = InputConfig(path=str(source))
        started = time.perf_counter()
        plan = plan_input(*list_input_files(config), config)
        small = {"files": args.files, "planning_s": round(time.perf_counter() - started, 2),
                 "pieces": len(plan.pieces)}
        job_config = write_config(scratch / "small.json", source, scratch / "out-small", model)
        small["first_run"] = run_embed_job(job_config, env)
        small["first_run"]["after_startup_s"] = round(small["first_run"]["wall_s"] - base, 2)
        small["resume_nothing_to_do"] = run_embed_job(job_config, env)
        report["small_files"] = small
        report["resume_pieces"] = resume_pieces(scratch, source, model, env)
        report["manifest_10000_pieces"] = manifest_listing(scratch)
        ray.shutdown()
    report["actor_share"] = actor_share(args.actor_rows)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
