"""Serving under load: concurrent clients against serve/config.yaml's service with dynamic batching on and
off (same run, same requests), then a replica's process killed mid-load. Prints one JSON object.

    python bench/serve_load.py [--requests 640] [--clients 32]
"""

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import ray
import torch

from raylib.config import EmbedderConfig
from raylib.data.sample_corpus import sample_documents
from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_spec
from raylib.runtime import free_port
from serve.local import default_config, local_service

MODEL = "all-minilm-l6-v2"


def service_config(batching: bool, replicas: int) -> dict:
    config = default_config()
    config["http_options"]["port"] = free_port()
    app = config["applications"][0]
    app["args"]["batching"]["enabled"] = batching
    app["args"]["api_key_env"] = None  # on 127.0.0.1 for this run only
    model = next(d for d in app["deployments"] if d["name"] == MODEL)
    model.pop("autoscaling_config")
    model["num_replicas"] = replicas
    return config


async def run_load(url: str, texts: list[str], clients: int, halfway=None) -> dict:
    """Send one request per text from `clients` concurrent clients; latency percentiles, rate and errors.

    `halfway`, when given, is called (in a thread) once a quarter of the requests have finished.
    """
    pending = list(reversed(texts))
    latencies, errors = [], []
    started = time.perf_counter()
    fired = asyncio.Event()

    async def client(http: httpx.AsyncClient) -> None:
        while pending:
            text = pending.pop()
            sent = time.perf_counter()
            try:
                response = await http.post("/v1/embeddings", json={"input": text, "model": MODEL})
                ok = response.status_code == 200
                detail = response.text[:200]
            except httpx.HTTPError as exc:
                ok, detail = False, repr(exc)
            if ok:
                latencies.append(time.perf_counter() - sent)
            else:
                errors.append(detail)
            if halfway and not fired.is_set() and len(latencies) + len(errors) >= len(texts) // 4:
                fired.set()
                await asyncio.to_thread(halfway)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    seconds = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2
    return {
        "requests": len(texts), "ok": len(latencies), "errors": len(errors), "first_error": errors[:1],
        "seconds": round(seconds, 2), "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * p50, 1), "p99_ms": round(1000 * p99, 1),
    }


def model_batching_ceiling(texts: list[str], threads: int = 1) -> dict:
    """Rows/s of the bare model (as serve/config.yaml configures it) one row per forward vs 32 rows per
    forward: what batching can gain at most."""
    torch.set_num_threads(threads)
    served = default_config()["applications"][0]["args"]["models"][0]["model"]
    embedder = Embedder(resolve_spec(**EmbedderConfig.model_validate(served).model_dump()))
    token_ids = embedder.tokenize(texts)
    rates = {}
    for rows in (1, 32):
        started = time.perf_counter()
        for start in range(0, len(token_ids), rows):
            embedder.embed_tokens(token_ids[start : start + rows], batch_tokens=1 << 20)
        rates[rows] = len(token_ids) / (time.perf_counter() - started)
    return {"rows_per_s_single": round(rates[1], 1), "rows_per_s_batch32": round(rates[32], 1),
            "ratio": round(rates[32] / rates[1], 2), "threads": threads, "precision": embedder.precision}


def kill_one_replica() -> None:
    """SIGKILL the process of one of the model's replicas (found by its Ray process title)."""
    title = f"ray::ServeReplica:embeddings:{MODEL}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title):
                os.kill(int(pid), signal.SIGKILL)
                return
        except OSError:
            continue
    raise RuntimeError(f"no process titled {title.decode()}")


def measure(workloads: dict[str, list[str]], clients: int, batching: bool, replicas: int, workdir: Path,
            kill: bool = False) -> dict:
    """Start the service once and run each workload against it (after a short warm-up)."""
    address = ray.get_runtime_context().gcs_address
    with local_service(service_config(batching, replicas), address, workdir) as url:
        results = {}
        for name, texts in workloads.items():
            asyncio.run(run_load(url, texts[: clients * 2], clients))  # warm-up: first batches, connections
            results[name] = asyncio.run(run_load(url, texts, clients, halfway=kill_one_replica if kill else None))
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    documents = sample_documents(args.requests)
    texts = [documents[i % len(documents)]["text"] for i in range(args.requests)]
    workloads = {
        "documents": texts,  # real docstrings and help pages, ~20-256 tokens after truncation
        "queries": [" ".join(text.split()[:12]) for text in texts],  # search-query sized, ~10-20 tokens
    }
    ray.init(address="local", num_cpus=max(4, os.cpu_count()), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        batched = measure(workloads, args.clients, True, 1, Path(tmp) / "batched")
        unbatched = measure(workloads, args.clients, False, 1, Path(tmp) / "unbatched")
        killed = measure({"documents": texts}, args.clients, True, 2, Path(tmp) / "kill", kill=True)["documents"]
    report = {"clients": args.clients, "cpu_count": os.cpu_count()}
    for name in workloads:
        report[name] = {
            "batched": batched[name],
            "unbatched": unbatched[name],
            "throughput_ratio": round(batched[name]["requests_per_s"] / unbatched[name]["requests_per_s"], 2),
            "batched_p99_over_p50": round(batched[name]["p99_ms"] / batched[name]["p50_ms"], 2),
            "model_only_batching_ceiling": model_batching_ceiling(workloads[name][:256]),
        }
    report["replica_killed"] = killed
    report["replica_killed_success_rate"] = round(killed["ok"] / killed["requests"], 4)
    report["targets"] = {"throughput_ratio": ">= 3", "batched_p99_over_p50": "<= 3", "batched_errors": 0,
                         "replica_killed_success_rate": ">= 0.99"}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
