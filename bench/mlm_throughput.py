"""MLM training throughput: our nomic-bert training step vs transformers' BertForMaskedLM of the same size
(layers, hidden, heads, seq len, batch) in the same process, then the Ray Train job with 1 vs 2 data-parallel
workers of one thread each. Prints one JSON object.

    python bench/mlm_throughput.py [--layers 4 --hidden 256 --heads 4 --seq 256 --batch 8 --steps 30]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import BertConfig, BertForMaskedLM

from raylib.config import MlmJobConfig
from raylib.data.masking import mask_tokens
from raylib.data.sample_corpus import sample_documents, write_shards
from raylib.models.nomic_bert import NomicBertConfig, NomicBertForMaskedLM
from raylib.train.run import run_mlm

VOCAB, MASK, SPECIAL = 30522, 103, [101, 102, 0]


def step_seconds(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Median seconds of forward + backward + AdamW step over the batches (the first two are warm-up)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for input_ids, labels in batches:
        started = time.perf_counter()
        model(input_ids=input_ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def compare_models(args) -> dict:
    """Tokens/s of one training step, ours vs BertForMaskedLM, one thread, fp32, identical masked batches."""
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.steps):
        input_ids = torch.randint(1000, VOCAB, (args.batch, args.seq), generator=generator)
        input_ids[:, 0], input_ids[:, -1] = 101, 102
        batches.append(mask_tokens(input_ids, 0.3, MASK, VOCAB, SPECIAL, generator))
    ours = NomicBertForMaskedLM(NomicBertConfig(
        n_embd=args.hidden, n_head=args.heads, n_layer=args.layers, n_inner=4 * args.hidden,
        max_trained_positions=args.seq))
    bert = BertForMaskedLM(BertConfig(
        hidden_size=args.hidden, num_attention_heads=args.heads, num_hidden_layers=args.layers,
        intermediate_size=4 * args.hidden, max_position_embeddings=args.seq, attn_implementation="sdpa"))
    tokens = args.batch * args.seq
    ours_rate = tokens / step_seconds(ours, batches)
    bert_rate = tokens / step_seconds(bert, batches)
    return {
        "shape": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "seq": args.seq,
                  "batch": args.batch},
        "parameters": {"ours": sum(p.numel() for p in ours.parameters()),
                       "bert": sum(p.numel() for p in bert.parameters())},
        "ours_tokens_per_s": round(ours_rate), "bert_tokens_per_s": round(bert_rate),
        "ours_over_bert": round(ours_rate / bert_rate, 2),
    }


def ray_train_rate(corpus: Path, storage: Path, workers: int, args) -> float:
    """Median cluster tokens/s of the MLM job's steps after the first three, with `workers` x 1 thread."""
    config = MlmJobConfig.model_validate({
        "data": {"path": str(corpus)},
        "architecture": {"n_embd": args.hidden, "n_head": args.heads, "n_layer": args.layers,
                         "n_inner": 4 * args.hidden, "max_trained_positions": args.seq},
        "seq_len": args.seq, "batch_size": args.batch, "precision": "fp32",
        "optim": {"lr": 5e-4, "max_steps": args.steps},
        "scaling": {"num_workers": workers, "cpus_per_worker": 0.75, "threads_per_worker": 1},
        "checkpoint": {"storage_path": str(storage), "name": f"workers-{workers}", "every_steps": args.steps},
    })
    run_mlm(config)
    rows = [json.loads(line) for line in (storage / f"workers-{workers}" / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(row["tokens_per_s"] for row in rows[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    report = {"single_process": compare_models(args)}
    with tempfile.TemporaryDirectory() as scratch:
        corpus = Path(scratch) / "corpus"
        write_shards(sample_documents(), corpus, shards=4, fmt="jsonl")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        one = ray_train_rate(corpus, Path(scratch) / "runs", 1, args)
        two = ray_train_rate(corpus, Path(scratch) / "runs", 2, args)
        ray.shutdown()
    report["ray_train"] = {"one_worker_tokens_per_s": round(one), "two_workers_tokens_per_s": round(two),
                           "two_over_one": round(two / one, 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
