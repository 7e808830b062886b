"""Which device a process computes on: one rule for model actors, serving replicas, and in-process embedding in
evaluation and mining (training workers take Ray Train's own, `ray.train.torch.get_device`)."""

from __future__ import annotations


def choose_device(assigned_gpus: list, cuda_available: bool, ray_worker: bool) -> str:
    """'cuda:0' or 'cpu'. A Ray worker (task, actor, replica) computes on a GPU only when Ray assigned it one
    (Ray then makes that GPU the process's first visible device), never on one it did not reserve; any other
    process (a job's driver) uses the GPU when there is one."""
    if not cuda_available:
        return "cpu"
    if ray_worker:
        return "cuda:0" if assigned_gpus else "cpu"
    return "cuda:0"


def current_device() -> str:
    """This process's device by choose_device, from what Ray assigned it and what CUDA sees."""
    import ray
    import torch

    ray_worker = ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    return choose_device(ray.get_gpu_ids() if ray_worker else [], torch.cuda.is_available(), ray_worker)
