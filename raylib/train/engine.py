"""One worker's model, optimizer and schedule behind one interface for DDP and DeepSpeed ZeRO: accumulate
micro-batch losses, take optimizer steps, save and load checkpoints.

A checkpoint directory holds `model/` (rank 0, the export: by default `save_pretrained` with safetensors, so
`from_pretrained` opens it) and the training state: `training_state.pt` (DDP: weights, optimizer, schedule) or
`deepspeed/` (ZeRO shards written by every rank), plus `progress.json` with the step and data position.
"""

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from raylib.config import OptimConfig, StrategyConfig
from raylib.models.precision import autocast, resolve_precision

STATE_FILE = "training_state.pt"
PROGRESS_FILE = "progress.json"
DEEPSPEED_DIR = "deepspeed"


def build_optimizer(model: torch.nn.Module, optim: OptimConfig):
    """AdamW (no decay on biases and norms) and a linear warm-up / linear decay schedule."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=optim.betas, eps=optim.eps,
    )

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        return max(0.0, (optim.max_steps - step) / max(1, optim.max_steps - optim.warmup_steps))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_pretrained(module: torch.nn.Module, state: dict, directory: Path) -> None:
    """The default export: a transformers model directory with safetensors weights."""
    module.save_pretrained(directory, state_dict=state, safe_serialization=True)


def deepspeed_config(optim: OptimConfig, strategy: StrategyConfig, micro_batch: int, precision: str) -> dict:
    """The DeepSpeed JSON config our YAML sections imply (clipping, accumulation and fp16's dynamic loss scaling
    done by the engine) for a resolved precision."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": optim.grad_accum,
        "gradient_clipping": optim.max_grad_norm,
        "zero_optimization": {"stage": strategy.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
    }


def export_mismatches(checkpoint: Path, prefix: str = "bert.") -> list[str]:
    """The encoder tensors (the trained model's under `prefix`) whose published copy in checkpoint/model differs
    from the DeepSpeed checkpoint's fp32 weights, gathered from every rank's partition, or is missing on either
    side; empty when the export holds the trained encoder."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from raylib.models.encoder import load_encoder

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint / DEEPSPEED_DIR), tag="state")
    trained = {name.removeprefix(prefix): tensor for name, tensor in state.items() if name.startswith(prefix)}
    exported = load_encoder(checkpoint / "model").state_dict()
    return sorted(name for name in trained.keys() | exported.keys()
                  if name not in trained or name not in exported or exported[name].shape != trained[name].shape
                  or not torch.allclose(exported[name], trained[name]))


class TrainEngine:
    """Wraps a model for data-parallel training with the strategy of the YAML.

    `accumulate(loss)` once per micro-batch; `finish_step()` after `optim.grad_accum` of them applies the
    update and returns the gradient norm. `precision` is fp32, bf16, fp16 or auto (bf16 where the device computes
    it natively, else fp16 on a GPU, else fp32). With DDP, bf16 and fp16 mean autocast over fp32 weights, fp16
    with a dynamic loss scaler (torch.amp.GradScaler: steps whose gradients overflow are skipped and the scale
    halves); with DeepSpeed they mean DeepSpeed's bf16 / fp16 modes (16-bit weights, fp32 master copy in the
    optimizer, DeepSpeed's own loss scaling).
    """

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, strategy: StrategyConfig, micro_batch: int,
                 precision: str, export: Callable[[torch.nn.Module, dict, Path], None] | None = None):
        import ray.train.torch

        self.optim, self.strategy = optim, strategy
        self.export = export or save_pretrained
        self.device = ray.train.torch.get_device()
        self.precision = resolve_precision(precision, self.device)
        self.module = model
        self._micro = 0
        optimizer, scheduler = build_optimizer(model, optim)
        if strategy.kind == "deepspeed":
            if self.device.type == "cpu":
                os.environ.setdefault("DS_ACCELERATOR", "cpu")
            import deepspeed

            self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model, optimizer=optimizer, lr_scheduler=scheduler,
                config=deepspeed_config(optim, strategy, micro_batch, self.precision),
            )
            self.scaler = None
        else:
            self.optimizer, self.scheduler = optimizer, scheduler
            self.model = ray.train.torch.prepare_model(model)
            self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to back-propagate: multiplied by the loss scaler's factor (fp16 with DDP), else unchanged."""
        return self.scaler.scale(loss) if self.scaler else loss

    def autocast(self):
        """The forward-pass context: autocast to 16 bits for DDP; DeepSpeed's 16-bit weights need none."""
        return autocast(self.precision if self.strategy.kind == "ddp" else "fp32", self.device)

    def accumulate(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss (gradients are synchronised on the step's last micro-batch)."""
        self._micro += 1
        if self.strategy.kind == "deepspeed":
            self.model.backward(loss)
            self.model.step()  # applies the update only at the accumulation boundary
            return
        last = self._micro == self.optim.grad_accum
        sync = self.model.no_sync() if hasattr(self.model, "no_sync") and not last else contextlib.nullcontext()
        with sync:
            self.scale(loss / self.optim.grad_accum).backward()

    def accumulate_in_parts(self, run: Callable[[torch.nn.Module, torch.nn.Module], torch.Tensor]) -> torch.Tensor:
        """One micro-batch whose backward passes the caller runs itself (GradCache). run(local, last) gets the
        bare module, whose backward passes keep gradients on this worker, and the module for the last pass:
        on the step's last micro-batch the DDP model, which averages the accumulated gradients across workers.
        The caller divides its loss by optim.grad_accum and back-propagates `scale(loss)`."""
        if self.strategy.kind != "ddp":
            raise RuntimeError("backward passes in parts need strategy ddp")
        self._micro += 1
        return run(self.module, self.model if self._micro == self.optim.grad_accum else self.module)

    def finish_step(self) -> float:
        """Apply the accumulated update; returns the gradient norm before clipping."""
        if self._micro != self.optim.grad_accum:
            raise RuntimeError(
                f"finish_step after {self._micro} micro-batches; optim.grad_accum is {self.optim.grad_accum}")
        self._micro = 0
        if self.strategy.kind == "deepspeed":
            norm = self.model.get_global_grad_norm()
            return float("nan") if norm is None else float(norm)
        if self.scaler:  # true gradients for clipping; a step with inf/nan gradients is skipped
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _full_state_dict(self) -> dict | None:
        """Every parameter in fp32 on rank 0 (ZeRO-3 gathers them: every rank must call this)."""
        if self.strategy.kind == "deepspeed" and self.strategy.zero_stage == 3:
            state = self.model._zero3_consolidated_16bit_state_dict()
        else:
            state = self.module.state_dict()
        if dist.is_initialized() and dist.get_rank() != 0:
            return None
        return {name: tensor.detach().float().cpu() for name, tensor in state.items()}

    def save(self, directory: Path, progress: dict) -> None:
        """Write this rank's part of a checkpoint into `directory` (every rank calls it)."""
        state = self._full_state_dict()
        rank0 = not dist.is_initialized() or dist.get_rank() == 0
        if self.strategy.kind == "deepspeed":
            self.model.save_checkpoint(str(directory / DEEPSPEED_DIR), tag="state")
        elif rank0:
            torch.save({"model": state, "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict() if self.scaler else None}, directory / STATE_FILE)
        if rank0:
            self.export(self.module, state, directory / "model")
            (directory / PROGRESS_FILE).write_text(json.dumps(progress))

    def load(self, directory: Path) -> dict:
        """Restore model, optimizer and schedule from a checkpoint directory; returns its progress record."""
        if self.strategy.kind == "deepspeed":
            self.model.load_checkpoint(str(directory / DEEPSPEED_DIR), tag="state", load_lr_scheduler_states=True)
        else:
            state = torch.load(directory / STATE_FILE, weights_only=True)
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        return json.loads((directory / PROGRESS_FILE).read_text())
