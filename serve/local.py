"""Run the service with `serve run` against a running Ray, for tests and benchmarks on one machine."""

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml
from ray import serve

SERVE_CONFIG = Path(__file__).with_name("config.yaml")


def default_config() -> dict:
    """serve/config.yaml as a dict, to adjust before running."""
    return yaml.safe_load(SERVE_CONFIG.read_text())


@contextmanager
def local_service(config: dict, ray_address: str, workdir: Path, timeout_s: float = 240) -> Iterator[str]:
    """`serve run` of `config` joined to `ray_address`; yields the base URL once /health answers 200.

    On exit the `serve run` process is interrupted and Serve is shut down (the caller must be connected
    to the same Ray). If the service does not come up, RuntimeError carries the end of its log.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "serve.yaml").write_text(yaml.safe_dump(config))
    http = config["http_options"]
    url = f"http://{http['host']}:{http['port']}"
    with open(workdir / "serve.log", "w") as log:
        serve_cli = str(Path(sys.executable).with_name("serve"))
        process = subprocess.Popen(
            [serve_cli, "run", str(workdir / "serve.yaml"), "--address", ray_address],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(url, process, workdir / "serve.log", timeout_s)
            yield url
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            serve.shutdown()


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float, name: str = "the service") -> None:
    """Return once `url`/health answers 200; RuntimeError with the end of `log` if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start; end of its log:\n" + log.read_text()[-3000:])
        time.sleep(1)
