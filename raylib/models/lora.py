"""LoRA adapters via peft: only adapter weights (and the modules outside the backbone, e.g. the pooling head)
train; `merge_lora_state` folds the adapters of a checkpoint's state dict into plain weights for export."""

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

from raylib.config import LoraConfig

PEFT_PREFIX = "base_model.model."


def apply_lora(model: nn.Module, config: LoraConfig) -> PeftModel:
    """Wrap `model` with LoRA adapters on config.target_modules; every other base weight is frozen."""
    return get_peft_model(model, PeftLoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=list(config.target_modules), bias="none",
    ))


def merge_lora_state(state: dict[str, torch.Tensor], config: LoraConfig) -> dict[str, torch.Tensor]:
    """A PeftModel's state dict as the plain model's: each adapted weight becomes W + (alpha / rank) B A.

    Works on a gathered checkpoint state (any strategy), leaving the training model untouched."""
    scaling = config.alpha / config.rank
    merged = {}
    for name, tensor in state.items():
        if ".lora_" in name:
            continue
        if name.endswith(".base_layer.weight"):
            layer = name.removesuffix(".base_layer.weight")
            update = state[f"{layer}.lora_B.default.weight"].float() @ state[f"{layer}.lora_A.default.weight"].float()
            tensor = (tensor.float() + scaling * update).to(tensor.dtype)
        merged[name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")] = tensor
    return merged
