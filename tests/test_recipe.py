"""The Nomic Embed recipe (jobs/recipes/nomic_embed_cpu.yaml) at tiny size on the session's Ray: every stage runs,
a run killed in the fine-tuning stage resumes there from its last checkpoint, the held-out NDCG@10 rises stage by
stage, the fine-tuned model opens in sentence-transformers and transformers without raylib and gives our vectors,
and a re-run trains nothing. A bad recipe fails before any stage, in one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from raylib.cli import launch
from raylib.config import load_config, validate_config
from raylib.data.sample_sets import docstring_set, docstring_training_rows
from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_spec
from raylib.recipe.config import RecipeConfig
from raylib.recipe.record import read_record
from raylib.recipe.run import run_recipe
from raylib.train.record import published_step, record_published
from tests.conftest import ROOT, run_without_raylib, write_jsonl

BAD_ROWS = [{"query": "no document"}, {"query": "", "document": "empty query"}, {"document": "no query"}]
RECIPE = ROOT / "jobs" / "recipes" / "nomic_embed_cpu.yaml"

OPEN_ANYWHERE = """
import json
import numpy as np, torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer
directory, texts = sys.argv[1], json.loads(sys.argv[2])
st = SentenceTransformer(directory, device="cpu").encode(texts, prompt_name="query", normalize_embeddings=True)
model = AutoModel.from_pretrained(directory).eval()
assert type(model).__module__ == "transformers.models.nomic_bert.modeling_nomic_bert", type(model).__module__
batch = AutoTokenizer.from_pretrained(directory)(["search_query: " + text for text in texts], padding=True,
                                                 return_tensors="pt")
with torch.no_grad():
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).float()
auto = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
np.savez("vectors.npz", st=st, auto=auto)
"""


def tiny_recipe(tmp_path: Path) -> dict:
    """The shipped CPU recipe on your own pairs file (3 bad rows first), with a narrower model, fewer steps and
    workers: 2 only where they gather negatives from each other (contrastive pretraining)."""
    recipe = yaml.safe_load(RECIPE.read_text())
    stages = recipe["stages"]
    recipe["output"] = str(tmp_path / "recipe")
    stages["pairs"] = {"job": "pairs", "source": "files", "path": str(tmp_path / "pairs")}
    one_worker = {"num_workers": 1, "cpus_per_worker": 1.5, "threads_per_worker": 2}
    stages["mlm"].update(architecture={"n_embd": 64, "n_head": 4, "n_layer": 2, "n_inner": 256,
                                       "max_trained_positions": 64},
                         seq_len=64, batch_size=8, scaling=one_worker,
                         optim={"lr": 2e-3, "warmup_steps": 2, "max_steps": 10})
    stages["mlm"]["checkpoint"]["every_steps"] = 10
    stages["contrastive"].update(batch_size=32, grad_cache_chunk=16, optim={"lr": 2e-3, "warmup_steps": 3,
                                                                             "max_steps": 24})
    stages["contrastive"]["checkpoint"]["every_steps"] = 24
    stages["mine"].update(negatives=1, search_depth=100)
    stages["finetune"].update(hard_negatives=1, batch_size=32, scaling=one_worker,
                              optim={"lr": 5e-4, "warmup_steps": 2, "max_steps": 16})
    stages["finetune"]["checkpoint"]["every_steps"] = 8
    stages["eval"]["data"]["limit"] = 200
    for name in ("contrastive", "mine", "finetune", "eval"):
        for model in [stages[name].get("model")] + [entry["model"] for entry in stages[name].get("models", [])]:
            if model:
                model["max_length"] = 64
    return recipe


def checkpoints(runs: Path) -> dict[str, list[str]]:
    return {run.name: sorted(path.name for path in run.iterdir() if path.name.startswith(("checkpoint_", "model")))
            for run in sorted(runs.iterdir())}


def kill_once_checkpointed(path: Path, run: Path, ray_address: str) -> None:
    """Run the recipe as `python jobs/recipe.py` would, joined to the session's Ray; SIGKILL it as soon as Ray
    Train has recorded a checkpoint of the training run in `run`."""
    crashed = subprocess.Popen([sys.executable, "jobs/recipe.py", "--config", str(path)], cwd=ROOT,
                               env={**os.environ, "RAY_ADDRESS": ray_address}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    snapshot, deadline = run / "checkpoint_manager_snapshot.json", time.time() + 600
    while not checkpointed(snapshot):
        assert crashed.poll() is None and time.time() < deadline, crashed.stdout.read()
        time.sleep(0.1)
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.wait()


def checkpointed(snapshot: Path) -> bool:
    """Ray Train's snapshot of a run's checkpoints names one (read whole: it may be mid-write)."""
    try:
        return json.loads(snapshot.read_text()).get("latest_checkpoint_result") is not None
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def test_the_recipe_chains_resumes_a_killed_stage_improves_on_held_out_data_and_a_rerun_trains_nothing(
        ray_session, tmp_path, capsys):
    write_jsonl(tmp_path / "pairs" / "pairs.jsonl", BAD_ROWS + docstring_training_rows(limit=800, negatives=0))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tmp_path), sort_keys=False))
    output = tmp_path / "recipe"

    kill_once_checkpointed(path, output / "runs" / "finetune", ray_session)  # a crash in the fine-tuning stage
    assert [read_record(str(output), name)["done"] for name in ("mine", "finetune")] == [True, False]
    killed_at = len((output / "runs" / "finetune" / "metrics.jsonl").read_text().splitlines())
    summary = run_recipe(load_config(path, RecipeConfig))
    rows = {row["stage"]: row for row in summary.rows}
    assert list(rows) == ["pairs", "mlm", "contrastive", "mine", "finetune", "eval"]
    assert [row["run"] for row in rows.values()] == ["skipped"] * 4 + ["ran"] * 2
    resumed = [json.loads(line)["step"] for line in
               (output / "runs" / "finetune" / "metrics.jsonl").read_text().splitlines()[killed_at:]]
    assert resumed == list(range(9, 17)), resumed  # from the checkpoint at step 8, not from the start
    assert (rows["mlm"]["steps"], rows["contrastive"]["steps"], rows["finetune"]["steps"]) == (10, 24, 16)
    ndcg = {name: rows[name]["ndcg@10"] for name in ("mlm", "contrastive", "finetune")}
    assert ndcg["finetune"] > ndcg["mlm"] + 0.05 and ndcg["contrastive"] > ndcg["mlm"] + 0.05, ndcg
    assert ndcg["finetune"] >= ndcg["contrastive"], ndcg
    assert (output / "table.txt").read_text().strip() == summary.line().rsplit("\n", 1)[0]
    assert (output / "chart.png").read_bytes().startswith(b"\x89PNG")
    logged = [json.loads(line) for line in (output / "runs" / "contrastive" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == list(range(1, 25)) and logged[-1]["bad_rows"] >= len(BAD_ROWS)

    finetuned = output / "runs" / "finetune" / "model"
    texts = list(docstring_set(limit=8).queries.values())
    ours = Embedder(resolve_spec(path=str(finetuned))).encode(texts, "query")
    run_without_raylib(OPEN_ANYWHERE, str(finetuned), json.dumps(texts), cwd=tmp_path)
    theirs = np.load(tmp_path / "vectors.npz")
    np.testing.assert_allclose(theirs["st"], ours, atol=1e-4, rtol=0)
    np.testing.assert_allclose(theirs["auto"], ours, atol=1e-4, rtol=0)

    before, logs = checkpoints(output / "runs"), {run: (output / "runs" / run / "metrics.jsonl").read_text()
                                                 for run in ("mlm", "contrastive", "finetune")}
    capsys.readouterr()
    assert launch("recipe", str(path)) == 0  # as `raylib recipe --config` runs it
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("recipe ran=0 skipped=6 ")
    assert [line.split()[2] for line in printed[-8:-1]] == ["run"] + ["skipped"] * 6
    assert checkpoints(output / "runs") == before
    assert logs == {run: (output / "runs" / run / "metrics.jsonl").read_text() for run in logs}


@pytest.mark.parametrize("change, message", [
    (lambda stages: stages["mlm"]["optim"].update(lr=-1), "stages.mlm: optim.lr: Input should be greater than 0"),
    (lambda stages: stages["contrastive"]["model"].update(path="${stages.finetune.output}"),
     "stages.contrastive.model.path: ${stages.finetune.output} names nothing this stage can read; use ${output}, "
     "${stages.pairs.output}, ${stages.mlm.output}"),
    (lambda stages: stages["mine"].update(job="mining"), "stages.mine.job: 'mining' is not a job; use one of pairs"),
    (lambda stages: stages["eval"].pop("output"), "stages.eval: output: required key is missing"),
])
def test_a_bad_recipe_fails_before_any_stage_in_one_line(tmp_path, capsys, change, message):
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["output"] = str(tmp_path / "recipe")
    change(recipe["stages"])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert launch("recipe", str(path)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"config error: {path}: {message}"), error
    assert not (tmp_path / "recipe").exists()


@pytest.mark.parametrize("name", ["nomic_embed_cpu.yaml", "nomic_embed_gpu.yaml"])
def test_the_shipped_recipes_check_and_chain_their_models_by_reference(tmp_path, name):
    recipe = yaml.safe_load((RECIPE.parent / name).read_text())
    recipe["output"] = str(tmp_path)  # where no stage ran yet
    stages = {stage.name: stage for stage in validate_config(recipe, RecipeConfig, name).plan()}
    assert list(stages) == ["pairs", "mlm", "contrastive", "mine", "finetune", "eval"]
    assert stages["contrastive"].config.model.path == stages["mlm"].output
    assert stages["mine"].config.model.path == stages["contrastive"].output
    assert stages["finetune"].config.datasets[0].path == stages["mine"].output
    assert [entry.model.path for entry in stages["eval"].config.models] == [
        stages[stage].output for stage in ("mlm", "contrastive", "finetune")]
    assert stages["contrastive"].config.grad_cache_chunk and stages["contrastive"].config.scaling.num_workers > 1


def test_a_published_model_counts_as_done_only_for_the_training_and_steps_that_made_it(tmp_path):
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["output"] = str(tmp_path)
    mlm = validate_config(recipe, RecipeConfig, "recipe").plan()[1].config
    (tmp_path / "runs" / "mlm" / "model").mkdir(parents=True)
    record_published(mlm, mlm.optim.max_steps)
    assert published_step(mlm) == mlm.optim.max_steps
    assert published_step(mlm.model_copy(update={"optim": mlm.optim.model_copy(update={"max_steps": 90})})) is None
    assert published_step(mlm.model_copy(update={"seq_len": 64})) is None
    record_published(mlm, 30)  # a run stopped before max_steps
    assert published_step(mlm) is None
