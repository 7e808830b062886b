"""What a training worker shares with the others: sums across workers and its share of the CPU threads."""

import math
import os

import torch
import torch.distributed as dist

from raylib.config import ScalingConfig


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over all workers (the values themselves outside a process group)."""
    if not dist.is_initialized():
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def set_threads(scaling: ScalingConfig) -> None:
    """Torch intra-op threads of this worker, from the YAML (default: its CPUs rounded up)."""
    threads = scaling.threads_per_worker or math.ceil(scaling.cpus_per_worker)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
