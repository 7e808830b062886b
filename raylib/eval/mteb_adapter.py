"""Our Embedder as an encoder for the `mteb` package (its encoder protocol, mteb >= 2):

    results = mteb.evaluate(MtebEncoder(EmbedderConfig(path=...), name="org/model"), tasks=[...], cache=None)

Queries get the model's query prefix or instruction, documents its document prefix (mteb's prompt_type);
vectors are L2-normalised, so similarity is cosine.
"""

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from raylib.config import EmbedderConfig
from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_spec


class MtebEncoder(AbsEncoder):
    """An mteb encoder backed by raylib's Embedder."""

    def __init__(self, config: EmbedderConfig, name: str = "raylib/embedder", revision: str = "local"):
        self.embedder = Embedder(resolve_spec(**config.model_dump()))
        self.mteb_model_meta = ModelMeta.create_empty({
            "name": name, "revision": revision, "similarity_fn_name": ScoringFunction.COSINE,
            "embed_dim": self.embedder.dimensions, "max_tokens": self.embedder.spec.max_length,
            "framework": ["PyTorch"],
        })

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray:
        """Vectors for every text of mteb's DataLoader, as queries or documents by `prompt_type`."""
        input_type = "query" if prompt_type == PromptType.query else "document"
        texts = [text for batch in inputs for text in batch["text"]]
        return self.embedder.encode(texts, input_type=input_type)
