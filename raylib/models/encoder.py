"""The encoder of a model directory: transformers' Auto classes, except that every nomic-bert layout (native,
nomic's remote code, ours: nomic_layouts.py) loads into our nomic-bert class, so that training and embedding run
its unpadded attention and per-sequence dynamic NTK whichever layout a model was published in."""

import json
from pathlib import Path

from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel

from raylib.models.nomic_bert import NomicBertModel
from raylib.models.nomic_layouts import NATIVE, layout_of, load_native, read_config


def _config_json(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def read_encoder_config(directory: Path, trust_remote_code: bool = False) -> PreTrainedConfig:
    """The config the encoder loads with (ours for any nomic-bert layout)."""
    config = _config_json(directory)
    if layout_of(config):
        return read_config(config)
    return AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)


def load_encoder(directory: Path, trust_remote_code: bool = False) -> PreTrainedModel:
    """The encoder of a model directory with its safetensors weights."""
    config = _config_json(directory)
    layout = layout_of(config)
    if layout == NATIVE:
        return load_native(directory)
    if layout:
        return NomicBertModel.from_pretrained(directory, config=read_config(config), use_safetensors=True)
    return AutoModel.from_pretrained(directory, use_safetensors=True, trust_remote_code=trust_remote_code)
