"""MLM pretraining on the session's local Ray: 2 DDP workers on real text, a worker SIGKILLed mid-run, the
DeepSpeed ZeRO-2 path, masking/packing rules and bad configs."""

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForMaskedLM, AutoTokenizer

from raylib.config import ConfigError, MlmJobConfig, OptimConfig, StrategyConfig, job_main
from raylib.data.masking import mask_tokens, pack_windows
from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_model_path, resolve_spec
from raylib.runtime import free_port
from raylib.storage import publish_local
from raylib.train.engine import deepspeed_config
from raylib.train.harness import TrainReports
from raylib.train.record import claim_run
from raylib.train.run import run_mlm
from tests.conftest import assert_resumed_from_a_checkpoint, write_jsonl

BAD_ROWS = [{"text": None}, {"text": ""}, {"body": "no text key"}]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, documents) -> Path:
    """Real text in two jsonl shards without ids, three bad rows first."""
    directory = tmp_path_factory.mktemp("mlm-corpus")
    texts = [{"text": doc["text"]} for doc in documents[:400]]
    write_jsonl(directory / "part-0.jsonl", BAD_ROWS + texts[:200])
    write_jsonl(directory / "part-1.jsonl", texts[200:])
    return directory


def job(corpus: Path, storage: Path, name: str, **sections) -> MlmJobConfig:
    """A tiny nomic-bert job: 2 layers of width 64, windows of 64 tokens, 2 workers of one thread."""
    config = {
        "data": {"path": str(corpus), "id_column": None},
        "architecture": {"n_embd": 64, "n_head": 4, "n_layer": 2, "n_inner": 256, "max_trained_positions": 64},
        "seq_len": 64,
        "batch_size": 8,
        "precision": "fp32",
        "optim": {"lr": 2e-3, "warmup_steps": 3, "max_steps": 30},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.75, "threads_per_worker": 1},
        "checkpoint": {"storage_path": str(storage), "name": name, "every_steps": 10, "max_failures": 2},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return MlmJobConfig.model_validate(config)


def logged(storage: Path, name: str) -> list[dict]:
    path = storage / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def mlm_loss(model, input_ids: torch.Tensor, generator_seed: int = 0) -> float:
    """MLM loss of `model` on windows masked with a fixed seed."""
    generator = torch.Generator().manual_seed(generator_seed)
    masked, labels = mask_tokens(input_ids, 0.3, 103, 30522, [101, 102, 0], generator)
    with torch.no_grad():
        return float(model(input_ids=masked, labels=labels).loss)


def test_pack_windows_keeps_every_token_in_order():
    documents = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    windows = list(pack_windows(documents, seq_len=6, cls_id=1, sep_id=2))
    assert windows == [[1, 5, 6, 7, 2, 2], [1, 8, 2, 9, 10, 2], [1, 11, 12, 13, 2, 2]]


def test_masking_rates_and_special_tokens():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, 2000, (64, 512))
    input_ids[:, 0], input_ids[:, -1] = 101, 102
    masked, labels = mask_tokens(input_ids, 0.3, 103, 30522, [101, 102, 0], generator)
    picked = labels != -100
    assert not picked[:, 0].any() and not picked[:, -1].any()  # [CLS]/[SEP] never picked
    assert torch.equal(labels[picked], input_ids[picked])
    assert abs(picked.float().mean().item() * 512 / 510 - 0.3) < 0.01
    to_mask = (masked[picked] == 103).float().mean().item()
    kept = (masked[picked] == input_ids[picked]).float().mean().item()
    assert abs(to_mask - 0.8) < 0.01 and abs(kept - 0.1) < 0.01  # the rest (~10%) are random tokens
    assert torch.equal(masked[~picked], input_ids[~picked])


def _reporting_worker(rank: int, port: int, seconds_since_report: list, results) -> None:
    """For each step, make this rank's last report that many seconds old (None: never), call TrainReports.step and
    note whether it went to ray.train.report (which raises outside a Ray Train run)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    reports, sent = TrainReports(engine=None), []
    for ages in seconds_since_report:
        reports.reported_at = None if ages[rank] is None else time.monotonic() - ages[rank]
        try:
            reports.step({"step": len(sent) + 1}, {}, save=False)
            sent.append(False)
        except RuntimeError as error:
            assert "outside of a Ray Train training function" in str(error)
            sent.append(True)
    results.put((rank, sent))
    dist.destroy_process_group()


def test_workers_report_to_ray_train_together_and_at_most_every_few_seconds():
    due, recent = TrainReports.SECONDS + 1, 0.0
    seconds_since_report = [(None, None), (recent, recent), (due, recent), (recent, due), (due, due)]
    context = mp.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_reporting_worker, args=(rank, port, seconds_since_report, results))
               for port in [free_port()] for rank in range(2)]
    for worker in workers:
        worker.start()
    sent = dict(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    # one rank due is enough: every rank reports (Ray Train's report is a collective step)
    assert sent[0] == sent[1] == [True, False, True, True, True]


def test_two_workers_loss_falls_and_the_checkpoint_opens(ray_session, corpus, tmp_path, documents):
    result = run_mlm(job(corpus, tmp_path, "ddp", precision="auto"))  # bf16 where this CPU has it natively
    rows = logged(tmp_path, "ddp")
    assert [row["step"] for row in rows] == list(range(1, 31))
    losses = [row["loss"] for row in rows]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    assert rows[-1]["lr"] == 0.0 and all(row["grad_norm"] > 0 and row["tokens_per_s"] > 0 for row in rows)
    assert rows[-1]["bad_rows"] >= len(BAD_ROWS)  # reported, not silently dropped
    assert rows[-1]["epoch"] >= 1  # the corpus is shorter than the run: workers started a new epoch together

    events = EventAccumulator(str(tmp_path / "ddp" / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == list(range(1, 31))

    trained = AutoModelForMaskedLM.from_pretrained(Path(result.checkpoint.path) / "model").eval()
    # published in transformers' own nomic_bert layout: its class opens it
    assert type(trained).__module__ == "transformers.models.nomic_bert.modeling_nomic_bert"
    assert trained.config.num_hidden_layers == 2
    fresh = type(trained)(trained.config).eval()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("bundled"))
    text = " ".join(doc["text"] for doc in documents[500:540])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    held_out = torch.tensor([[101, *ids[i:i + 62], 102] for i in range(0, 62 * 16, 62)])
    assert mlm_loss(trained, held_out) < mlm_loss(fresh, held_out) - 1.0

    published = tmp_path / "ddp" / "model"  # the fixed path a contrastive config names as model.path
    encoder = Embedder(resolve_spec(path=str(published), pooling="mean"))
    assert torch.equal(encoder.model.encoder.layers[1].mlp.fc2.weight, trained.nomic_bert.layers[1].mlp.down_proj.weight)
    assert encoder.encode(["a question about files"]).shape == (1, trained.config.hidden_size)


def test_deepspeed_config_follows_the_resolved_precision():
    for precision in ("fp32", "bf16", "fp16"):
        config = deepspeed_config(OptimConfig(max_steps=1), StrategyConfig(kind="deepspeed"), 4, precision)
        assert config["bf16"]["enabled"] == (precision == "bf16")
        assert config["fp16"]["enabled"] == (precision == "fp16")


def test_a_run_resumes_only_the_training_it_was_started_with(corpus, tmp_path):
    """The run's record refuses another training under the same name before any work; max_steps and the
    checkpoint settings may change (a resume); checkpoint.resume false starts the name over."""
    first = job(corpus, tmp_path, "recorded")
    claim_run(first)
    run = tmp_path / "recorded"
    (run / "checkpoint_2026-12-03_00-00-00.000000").mkdir()  # what Ray Train leaves after a checkpoint
    claim_run(job(corpus, tmp_path, "recorded", optim={"max_steps": 90}, checkpoint={"every_steps": 5},
                  scaling={"cpus_per_worker": 0.5}))
    changed = job(corpus, tmp_path, "recorded", optim={"lr": 1e-4}, architecture={"n_layer": 3})
    with pytest.raises(ConfigError) as refused:
        claim_run(changed)
    assert str(refused.value) == (
        f"checkpoint: {run} holds a run started with another config (architecture.n_layer: 2 -> 3; optim.lr: "
        "0.002 -> 0.0001); give checkpoint.name a new name, or set checkpoint.resume: false to start this one over")
    claim_run(changed.model_copy(update={"checkpoint": changed.checkpoint.model_copy(update={"resume": False})}))
    assert not any(path.name.startswith("checkpoint_") for path in run.iterdir())  # started over
    assert json.loads((run / "run_config.json").read_text())["optim.lr"] == 1e-4


def test_publishing_a_model_is_atomic_for_readers(tmp_path):
    """A reader that follows <name>/model once (as the model loader does) sees one version, whole, while
    versions are published; a model published before versions (a plain directory) is replaced too."""
    versions = []
    for number in range(6):
        version = tmp_path / "checkpoints" / str(number)
        version.mkdir(parents=True)
        for part in range(20):
            (version / f"part-{part}.json").write_text(json.dumps({"version": number}))
        versions.append(version)
    target = tmp_path / "run" / "model"
    target.mkdir(parents=True)
    (target / "part-0.json").write_text(json.dumps({"version": -1}))
    publish_local(versions[0], target)
    assert target.is_symlink() and json.loads((target / "part-0.json").read_text())["version"] == 0
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            model = target.resolve()  # as resolve_model_path does
            seen.append([json.loads(path.read_text())["version"] for path in sorted(model.iterdir())])

    reader = threading.Thread(target=read)
    reader.start()
    for version in versions[1:]:
        publish_local(version, target)
        reads = len(seen)
        while len(seen) < reads + 2 and reader.is_alive():  # a read that began before this publish has ended:
            time.sleep(0.001)  # at most one publish happens during any read (the previous version is kept)
    stop.set()
    reader.join()
    assert len(seen) >= 10  # the reader never failed
    assert seen and all(len(parts) == 20 and len(set(parts)) == 1 for parts in seen), seen[:3]
    assert json.loads((target / "part-0.json").read_text())["version"] == 5
    assert len(list(target.parent.glob("model-*"))) == 2  # the newest two versions stay


def train_worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"RayTrainWorker" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def checkpoint_registered(run: Path) -> bool:
    """Ray Train's controller has taken a checkpoint of the run (it keeps their list in this file)."""
    return (run / "checkpoint_manager_snapshot.json").is_file()


def test_killed_worker_resumes_from_checkpoint_in_fp16_with_its_loss_scaler(ray_session, corpus, tmp_path):
    """A SIGKILLed worker: the group restarts from the latest checkpoint. In precision fp16 (what auto becomes on
    GPUs without bf16): autocast to fp16 with a dynamic loss scaler, whose state the checkpoint keeps."""
    config = job(corpus, tmp_path, "killed", precision="fp16", batch_size=4,
                 optim={"max_steps": 40}, checkpoint={"every_steps": 5})
    outcome = {}
    training = threading.Thread(target=lambda: outcome.update(result=run_mlm(config)))
    training.start()
    deadline = time.monotonic() + 300
    while not (checkpoint_registered(tmp_path / "killed") and logged(tmp_path, "killed")[-1]["step"] >= 7):
        assert time.monotonic() < deadline and training.is_alive(), "training never saved a checkpoint"
        time.sleep(0.1)
    victim = max(train_worker_pids())
    os.kill(victim, signal.SIGKILL)
    training.join(timeout=600)

    assert outcome["result"].error is None
    steps = [row["step"] for row in logged(tmp_path, "killed")]
    restarts = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert len(restarts) == 1, steps
    assert_resumed_from_a_checkpoint(steps[:restarts[0]], steps[restarts[0]], every=5)
    assert steps[-1] == 40
    checkpoint = Path(outcome["result"].checkpoint.path)
    assert json.loads((checkpoint / "progress.json").read_text())["step"] == 40
    losses = [row["loss"] for row in logged(tmp_path, "killed")]
    assert all(math.isfinite(loss) for loss in losses) and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    scaler = torch.load(checkpoint / "training_state.pt", weights_only=True)["scaler"]
    assert scaler["scale"] >= 1 and math.log2(scaler["scale"]).is_integer()  # grown or backed off from 2**16
    assert scaler["_growth_tracker"] > 0 or scaler["scale"] != 2.0 ** 16  # it took part in the steps


def test_deepspeed_zero2_two_workers_and_resume(ray_session, corpus, tmp_path):
    strategy = {"kind": "deepspeed", "zero_stage": 2}
    first = run_mlm(job(corpus, tmp_path, "zero2", precision="bf16", strategy=strategy, batch_size=4,
                        optim={"max_steps": 4, "grad_accum": 2}, checkpoint={"every_steps": 2}))
    shards = sorted(path.name for path in (Path(first.checkpoint.path) / "deepspeed" / "state").iterdir())
    assert [name for name in shards if "optim_states" in name] == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    model = AutoModelForMaskedLM.from_pretrained(Path(first.checkpoint.path) / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # The same run name again with more steps continues from the saved ZeRO state.
    second = run_mlm(job(corpus, tmp_path, "zero2", precision="bf16", strategy=strategy, batch_size=4,
                         optim={"max_steps": 6, "grad_accum": 2}, checkpoint={"every_steps": 2}))
    steps = [row["step"] for row in logged(tmp_path, "zero2")]
    assert steps == [1, 2, 3, 4, 5, 6] and second.metrics["step"] == 6


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architecture": {"n_embd": 100, "n_head": 3}},
         "architecture: nomic_bert config: n_embd (100) must be divisible by n_head (3)"),
        ({"seq_len": 9000}, "seq_len: 9000 is longer than architecture.n_positions"),
        ({"data": {"path": "/nonexistent/texts"}}, "data.path: /nonexistent/texts does not exist"),
        ({"tokenizer": "/tmp"}, "tokenizer: /tmp has no tokenizer_config.json"),
        ({"strategy": {"kind": "fsdp"}}, "strategy.kind"),
    ],
)
def test_bad_config_fails_before_training(tmp_path, capsys, change, message):
    config = job(tmp_path, tmp_path / "runs", "bad").model_dump()
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(config[key], dict) else value
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    assert job_main("mlm", MlmJobConfig, run_mlm, ["--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert "config error" in error and message in error, error
    assert not (tmp_path / "runs" / "bad").exists()
