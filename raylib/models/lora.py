"""LoRA adapters via peft: only adapter weights (and modules named in `also_train`, e.g. the pooling head)
train; `merged` folds the adapters into plain weights for export."""

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

from raylib.config import LoraConfig


def apply_lora(model: nn.Module, config: LoraConfig) -> PeftModel:
    """Wrap `model` with LoRA adapters on config.target_modules; every other base weight is frozen."""
    return get_peft_model(model, PeftLoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=list(config.target_modules), bias="none",
    ))


def merged(model: PeftModel) -> nn.Module:
    """The base model with the adapters added into its weights (what gets saved for serving)."""
    return model.merge_and_unload()
