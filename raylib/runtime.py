"""Where jobs run: the cluster named by RAY_ADDRESS (as under `ray job submit`), else an embedded local Ray."""

from __future__ import annotations

import os
import socket

import ray

from raylib import console

DASHBOARD_ENV = "RAYLIB_DASHBOARD"  # set to 1 to start embedded Ray with its dashboard (off: ~1.5 s and ~5 CPU-s less)


def init_ray(log_to_driver: bool = True, **local_options) -> None:
    """Connect to RAY_ADDRESS when set, else start embedded Ray with `local_options` (without the dashboard unless
    RAYLIB_DASHBOARD=1); no-op when connected. log_to_driver False keeps the workers' output off this process's
    stdout. Inside a job's log (raylib/console.py), Ray is stopped as the job ends, so that what its shutdown
    prints goes to the log too."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:  # a new instance even when another Ray runs on this host
        local_options.setdefault("include_dashboard", os.environ.get(DASHBOARD_ENV, "0").strip() == "1")
        ray.init(address="local", log_to_driver=log_to_driver, **local_options)
    console.on_leave(ray.shutdown)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (for local heads and services started by tests and benches)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
