"""Decoder LLMs (Mistral, Llama, Qwen2 families) as bidirectional encoders, as NV-Embed trains them: every token
attends to every non-padding token."""

from transformers import PreTrainedModel


def make_bidirectional(model: PreTrainedModel) -> PreTrainedModel:
    """Remove the causal mask in place: `config.is_causal = False` makes transformers build a padding-only mask,
    and each attention module's `is_causal = False` keeps SDPA from applying its own causal flag when no mask
    is needed."""
    model.config.is_causal = False
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False
    return model
