"""The one-shot proof of the GPU paths: each item runs a real path of the platform, checks its own numbers and
reports its figures. Prints one JSON object; exits 1 when a correctness check missed (targets are reported, not
enforced).

    python bench/gpu_check.py                        # every item on the GPU: ~8 minutes on one H100/H200
    python bench/gpu_check.py --only grad_cache,serve
    python bench/gpu_check.py --smoke                # every item on the CPU at toy size (the test suite runs it)
    python bench/gpu_check.py --out report.json      # the JSON also to a file (stdout may carry Ray's lines)

Items:
  mlm_mfu        nomic-bert MLM training steps at seq 2048 in bf16: tokens/s and MFU, SDPA and flash-attn varlen
  mixed_lengths  forward + backward of a mixed-length batch: padded SDPA vs packed rows (flash-attn, or SDPA as the
                 packed kernel); outputs must agree (cosine >= 0.999 per token on average)
  grad_cache     a contrastive step with GradCache equals the plain step on the device with dropout on
  embed          the embed job with one GPU actor on the sample corpus: docs/s, vectors vs fp32 on the CPU (cos >= 0.999)
  serve          a serving replica with one GPU answering the OpenAI client: vectors vs the CPU's (cos >= 0.999)
  deepspeed      the MLM job under DeepSpeed ZeRO-2 and ZeRO-3 (one worker per GPU; --smoke: ZeRO-3 only, the
                 suite runs ZeRO-2):
                 steps run, the export holds the trained weights

Ray (embed, serve, deepspeed): joins RAY_ADDRESS when set, else starts a local one. The other items need only torch
and transformers, for a GPU machine where Ray is not installed.
"""

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import torch
import torch.nn.functional as F

from raylib.config import EmbedJobConfig, MlmJobConfig
from raylib.data.masking import mask_tokens
from raylib.data.sample_corpus import sample_documents, write_shards
from raylib.models.attention import flash_attn_varlen_func
from raylib.models.embedder import Embedder
from raylib.models.nomic_bert import NomicBertConfig, NomicBertForMaskedLM, NomicBertModel
from raylib.models.precision import autocast
from raylib.models.spec import resolve_spec
from raylib.train.grad_cache import grad_cache_step
from raylib.train.losses import info_nce
from raylib.train.metrics import step_flops_per_token

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
MIN_COSINE = 0.999
VOCAB, MASK, SPECIAL = 30522, 103, [101, 102, 0]


@dataclass(frozen=True)
class Size:
    """How big each item runs, and where."""

    device: str
    precision: str
    layers: int
    hidden: int
    heads: int
    seq: int
    batch: int
    steps: int
    documents: int | None  # of the sample corpus; None: all of it
    packed_kernel: str  # the packed backend set against padded SDPA
    gpus: float  # per embed actor, serving replica, training worker
    zero_stages: tuple[int, ...]  # DeepSpeed stages run (the suite's tests run stage 2 on the CPU)


GPU = Size("cuda", "bf16", layers=12, hidden=768, heads=12, seq=2048, batch=8, steps=10, documents=None,
           packed_kernel="flash", gpus=1, zero_stages=(2, 3))
SMOKE = Size("cpu", "fp32", layers=2, hidden=64, heads=4, seq=64, batch=4, steps=2, documents=48,
             packed_kernel="sdpa_unpadded", gpus=0, zero_stages=(3,))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nomic_config(size: Size, backend: str) -> NomicBertConfig:
    return NomicBertConfig(n_embd=size.hidden, n_head=size.heads, n_layer=size.layers, n_inner=4 * size.hidden,
                           max_trained_positions=size.seq, attn_backend=backend)


def peak_tflops() -> float | None:
    """The GPU's dense bf16 peak, by name; None on a CPU or an unknown GPU."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def flash_missing(backend: str) -> str | None:
    if backend == "flash" and flash_attn_varlen_func is None:
        return "flash-attn is not installed (pip install -e '.[gpu]'; look for a prebuilt wheel first): SDPA only"
    return None


def mlm_mfu(size: Size, scratch: Path) -> dict:
    """Training steps of nomic-bert MLM (30% masking, AdamW) on full windows: tokens/s and MFU per backend."""
    device = torch.device(size.device)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(size.steps + 3):
        input_ids = torch.randint(1000, VOCAB, (size.batch, size.seq), generator=generator)
        batches.append([t.to(device) for t in mask_tokens(input_ids, 0.3, MASK, VOCAB, SPECIAL, generator)])
    peak, report = peak_tflops(), {}
    for backend in ("sdpa", size.packed_kernel):
        if missing := flash_missing(backend):
            report[backend] = {"skipped": missing}
            continue
        torch.manual_seed(0)
        config = nomic_config(size, backend)
        model = NomicBertForMaskedLM(config).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        for step, (input_ids, labels) in enumerate(batches):
            if step == 3:  # after warm-up
                synchronize(device)
                started = time.perf_counter()
            with autocast(size.precision, device):
                loss = model(input_ids=input_ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        tokens_per_s = size.steps * size.batch * size.seq / (time.perf_counter() - started)
        parameters = sum(p.numel() for p in model.parameters())
        flops = step_flops_per_token(parameters, size.layers, size.hidden, size.seq) * tokens_per_s
        report[backend] = {"tokens_per_s": round(tokens_per_s), "tflops": round(flops / 1e12, 2),
                           "mfu": None if peak is None else round(flops / (peak * 1e12), 3),
                           "loss": round(float(loss), 3)}
        del model, optimizer
    report["shape"] = {"layers": size.layers, "hidden": size.hidden, "seq": size.seq, "batch": size.batch,
                       "precision": size.precision, "peak_tflops": peak}
    report["target"] = "MFU >= 0.40 at seq 2048 bf16"
    return report


def mixed_lengths(size: Size, scratch: Path) -> dict:
    """Forward + backward of the encoder on lengths spread over [seq/16, seq]: padded SDPA vs packed rows."""
    device = torch.device(size.device)
    generator = torch.Generator().manual_seed(1)
    rows = 2 * size.batch
    lengths = torch.randint(size.seq // 16, size.seq + 1, (rows,), generator=generator)
    input_ids = torch.randint(1000, VOCAB, (rows, size.seq), generator=generator).to(device)
    mask = (torch.arange(size.seq)[None, :] < lengths[:, None]).to(device)
    torch.manual_seed(0)
    reference = NomicBertModel(nomic_config(size, "sdpa")).to(device)
    report, outputs = {"real_token_fraction": round(float(mask.float().mean()), 3)}, {}
    for backend in ("sdpa", size.packed_kernel):
        if missing := flash_missing(backend):
            report[backend] = {"skipped": missing}
            continue
        model = NomicBertModel(nomic_config(size, backend)).to(device)
        model.load_state_dict(reference.state_dict())
        times = []
        for _ in range(size.steps + 2):
            synchronize(device)
            started = time.perf_counter()
            with autocast(size.precision, device):
                hidden = model(input_ids, mask).last_hidden_state
            (hidden.float() * mask[..., None]).square().mean().backward()
            synchronize(device)
            times.append(time.perf_counter() - started)
            model.zero_grad(set_to_none=True)
        outputs[backend] = hidden.detach().float()[mask]
        report[backend] = {"seconds": round(statistics.median(times[2:]), 4)}
    report["failed"] = []
    if size.packed_kernel in outputs:
        cosine = F.cosine_similarity(outputs[size.packed_kernel], outputs["sdpa"], dim=-1)
        report["cosine_to_sdpa"] = {"mean": round(float(cosine.mean()), 5), "min": round(float(cosine.min()), 5)}
        report["speedup_over_sdpa"] = round(report["sdpa"]["seconds"] / report[size.packed_kernel]["seconds"], 2)
        if cosine.mean() < MIN_COSINE:
            report["failed"].append(f"{size.packed_kernel} outputs differ from padded SDPA's (mean cosine "
                                    f"{float(cosine.mean()):.5f} < {MIN_COSINE})")
    report["target"] = "flash-attn varlen >= 1.3x padded SDPA"
    return report


def grad_cache(size: Size, scratch: Path) -> dict:
    """GradCache's chunked step against the plain step with dropout 0.1, on the device, in fp32."""
    from transformers import BertConfig, BertModel

    device = torch.device(size.device)
    config = BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    torch.manual_seed(0)
    cached = BertModel(config).to(device).train()
    plain = copy.deepcopy(cached)
    generator = torch.Generator().manual_seed(2)
    queries, documents = (torch.randint(1000, VOCAB, (32, 24), generator=generator).to(device) for _ in range(2))

    def encode(model):
        return lambda ids: F.normalize(model(input_ids=ids).last_hidden_state.mean(dim=1), dim=-1)

    def loss_fn(q, d):
        return info_nce(q, d, None, 20.0, symmetric=True)

    with torch.no_grad():  # dropout must be on, or the equality below proves nothing
        dropout_changes = not torch.allclose(encode(cached)(queries[:4]), encode(cached)(queries[:4]))
    torch.manual_seed(5)
    loss = grad_cache_step(encode(cached), [queries.split(8), documents.split(8)], loss_fn)
    torch.manual_seed(5)  # the plain step draws dropout chunk by chunk in the same order
    plain_loss = loss_fn(torch.cat([encode(plain)(c) for c in queries.split(8)]),
                         torch.cat([encode(plain)(c) for c in documents.split(8)]))
    plain_loss.backward()
    worst = max(float((a.grad - b.grad).abs().max() / b.grad.abs().max().clamp_min(1e-12))
                for a, b in zip(cached.parameters(), plain.parameters()) if b.grad is not None)
    report = {"loss": round(float(loss), 5), "plain_loss": round(float(plain_loss), 5),
              "max_relative_grad_difference": worst, "dropout_changes_vectors": dropout_changes, "failed": []}
    if not dropout_changes:
        report["failed"].append("dropout did not change the vectors: the check would prove nothing")
    if worst > 1e-3 or abs(float(loss) - float(plain_loss)) > 1e-4:
        report["failed"].append(f"GradCache's gradients differ from the plain step's (relative {worst:.2e})")
    return report


def cosine_to_cpu(texts: list[str], vectors: np.ndarray) -> dict:
    """Row-wise cosine of `vectors` to the bundled model's fp32 vectors of `texts` computed on the CPU."""
    expected = Embedder(resolve_spec(), device="cpu").encode(texts)
    cosine = (vectors * expected).sum(axis=1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1))
    return {"mean": round(float(cosine.mean()), 5), "min": round(float(cosine.min()), 5)}


def embed(size: Size, scratch: Path) -> dict:
    """The embed job, one actor with size.gpus GPUs, precision auto, on the sample corpus."""
    from raylib.embed.run import run_embed

    documents = sample_documents(size.documents)
    write_shards(documents, scratch / "docs", shards=4, fmt="parquet")
    config = EmbedJobConfig.model_validate({
        "input": {"path": str(scratch / "docs"), "rows_per_piece": 1024},
        "model": {"path": "bundled", "precision": "auto"},
        "output": {"path": str(scratch / "embeddings")},
        "compute": {"actors": 1, "cpus_per_actor": 1, "gpus_per_actor": size.gpus,
                    "batch_tokens": 65536 if size.gpus else 2048},
    })
    summary = run_embed(config)
    table = pads.dataset(str(scratch / "embeddings"), format="parquet").to_table()
    by_id = dict(zip(table["id"].to_pylist(), table["embedding"].to_numpy(zero_copy_only=False)))
    sample = documents[:512]
    cosine = cosine_to_cpu([doc["text"] for doc in sample], np.stack([by_id[doc["id"]] for doc in sample]))
    report = {"rows": summary.rows, "seconds": round(summary.seconds, 1),
              "docs_per_s": round(summary.rows / summary.seconds, 1), "cosine_to_cpu_fp32": cosine, "failed": []}
    if summary.rows != len(documents) or table.num_rows != len(documents):
        report["failed"].append(f"embedded {table.num_rows} rows of {len(documents)}")
    if cosine["min"] < MIN_COSINE:
        report["failed"].append(f"vectors differ from the CPU's (min cosine {cosine['min']} < {MIN_COSINE})")
    return report


def serve(size: Size, scratch: Path) -> dict:
    """`serve run` with one replica of size.gpus GPUs, asked by the official OpenAI client."""
    import openai
    import ray

    from raylib.runtime import free_port
    from serve.local import default_config, local_service

    config = default_config()
    config["http_options"] = {"host": "127.0.0.1", "port": free_port()}
    app = config["applications"][0]
    app["args"]["models"] = [{"name": "minilm", "model": {"path": "bundled", "precision": "auto"}}]
    app["args"]["api_key_env"] = None  # 127.0.0.1 only, for the check's few seconds
    app["deployments"] = [
        {"name": "EmbeddingsAPI", "ray_actor_options": {"num_cpus": 0.1}},
        {"name": "minilm", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5, "num_gpus": size.gpus}},
    ]
    texts = [doc["text"] for doc in sample_documents(32)]
    with local_service(config, ray.get_runtime_context().gcs_address, scratch / "serve") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        latencies, vectors = [], []
        for text in texts:
            started = time.perf_counter()
            vectors.append(client.embeddings.create(model="minilm", input=text).data[0].embedding)
            latencies.append(time.perf_counter() - started)
    cosine = cosine_to_cpu(texts, np.array(vectors, dtype=np.float32))
    report = {"requests": len(texts), "p50_ms": round(1000 * statistics.median(latencies), 1),
              "cosine_to_cpu_fp32": cosine, "failed": []}
    if cosine["min"] < MIN_COSINE:
        report["failed"].append(f"vectors differ from the CPU's (min cosine {cosine['min']} < {MIN_COSINE})")
    return report


def deepspeed(size: Size, scratch: Path) -> dict:
    """The MLM job under DeepSpeed ZeRO (2 and 3 on a GPU; 3 in the smoke run), one worker (one GPU), a few
    steps, and an export that holds the trained weights."""
    from raylib.train.engine import export_mismatches
    from raylib.train.run import run_mlm

    write_shards(sample_documents(400), scratch / "mlm-corpus", shards=2, fmt="jsonl")
    report = {"failed": []}
    for stage in size.zero_stages:
        name = f"zero{stage}"
        config = MlmJobConfig.model_validate({
            "data": {"path": str(scratch / "mlm-corpus")},
            "architecture": {"n_embd": size.hidden, "n_head": size.heads, "n_layer": size.layers,
                             "n_inner": 4 * size.hidden, "max_trained_positions": min(size.seq, 512)},
            "seq_len": min(size.seq, 512), "batch_size": size.batch, "precision": size.precision,
            "strategy": {"kind": "deepspeed", "zero_stage": stage},
            "optim": {"lr": 1e-4, "max_steps": 6},
            "scaling": {"num_workers": 1, "use_gpu": bool(size.gpus), "cpus_per_worker": 1},
            "checkpoint": {"storage_path": str(scratch / "runs"), "name": name, "every_steps": 6},
        })
        result = run_mlm(config)
        rows = [json.loads(line) for line in (scratch / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        mismatches = export_mismatches(Path(result.checkpoint.path))  # the export holds the gathered weights
        report[name] = {"steps": len(rows), "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in rows)),
                        "last_loss": round(rows[-1]["loss"], 3), "export_equals_trained": not mismatches}
        if len(rows) != 6 or mismatches:
            report["failed"].append(f"{name}: {len(rows)} steps of 6; the export differs from the trained weights "
                                    f"at {mismatches[:3]}")
    return report


RAY_ITEMS = {"embed", "serve", "deepspeed"}  # the others need only torch (and transformers)
ITEMS = {"mlm_mfu": mlm_mfu, "mixed_lengths": mixed_lengths, "grad_cache": grad_cache, "embed": embed,
         "serve": serve, "deepspeed": deepspeed}


def environment() -> dict:
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda,
            **{package: version(package) for package in ("flash-attn", "deepspeed", "ray", "transformers")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every item on the CPU at toy size")
    parser.add_argument("--only", default=",".join(ITEMS), help=f"comma-separated items of {', '.join(ITEMS)}")
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    items = args.only.split(",")
    if unknown := sorted(set(items) - set(ITEMS)):
        parser.error(f"--only: unknown items {', '.join(unknown)}; choose from {', '.join(ITEMS)}")
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; run with --smoke for the CPU version")
    size = SMOKE if args.smoke else GPU
    report, failed = {"environment": environment(), "smoke": args.smoke, "items": {}}, []
    if RAY_ITEMS & set(items):
        from raylib.runtime import init_ray

        init_ray(log_to_driver=False, include_dashboard=False)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        for item in items:
            started = time.perf_counter()
            try:
                (Path(scratch) / item).mkdir()
                result = ITEMS[item](size, Path(scratch) / item)
            except Exception as error:  # one broken item must not hide the others' figures
                result = {"failed": [f"{type(error).__name__}: {error}"], "traceback": traceback.format_exc()[-3000:]}
            result["seconds_total"] = round(time.perf_counter() - started, 1)
            failed += [f"{item}: {miss}" for miss in result.get("failed", [])]
            report["items"][item] = result
            print(f"{item}: {'ok' if not result.get('failed') else 'FAILED'} in {result['seconds_total']} s",
                  file=sys.stderr, flush=True)
    report["failed"] = failed
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
