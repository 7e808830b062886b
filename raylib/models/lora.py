"""LoRA adapters via peft: only adapter weights (and the modules outside the backbone, e.g. the pooling head)
train; `merged_state` has peft fold the adapters of a checkpoint's weights into plain ones for export."""

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float, target_modules: list[str]) -> PeftModel:
    """Wrap `model` with LoRA adapters on the linear layers named in target_modules; every other base weight
    is frozen."""
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=list(target_modules), bias="none"))


def merged_state(adapted: PeftModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (a state dict of `adapted`, e.g. gathered from a checkpoint under any strategy) as the plain
    model's weights with every adapter merged in by peft's merge_and_unload; the training model is untouched.

    The copy is built on the meta device and takes the state's tensors in place; only the adapted weights,
    which merging changes in place, are copied."""
    base = adapted.get_base_model()
    with torch.device("meta"):
        copy = get_peft_model(type(base)(base.config), adapted.peft_config[adapted.active_adapter])
    copy.load_state_dict({name: tensor.clone() if ".base_layer." in name else tensor
                          for name, tensor in state.items()}, assign=True)
    return copy.merge_and_unload().state_dict()
