"""Write a small randomly initialised decoder LLM (Mistral, Llama or Qwen2 family) with the bundled tokenizer:
the CPU-sized stand-in for a 7B model in the NV-Embed configs and tests (nothing is downloaded).

    python -m raylib.models.tiny_decoder --family mistral --out examples/models/tiny-mistral
"""

import argparse
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from raylib.config import BUNDLED_MODEL
from raylib.models.spec import resolve_model_path


def write_tiny_decoder(out: Path, family: str = "mistral", hidden_size: int = 64, layers: int = 2,
                       heads: int = 4, kv_heads: int = 2, seed: int = 0) -> Path:
    """A `family` decoder of the given size, saved with safetensors and the bundled tokenizer in `out`."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(BUNDLED_MODEL))
    config = AutoConfig.for_model(
        family, vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--family", choices=["mistral", "llama", "qwen2"], default="mistral")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    write_tiny_decoder(args.out, args.family, args.hidden_size, args.layers)
    print(f"wrote a {args.layers}-layer {args.family} decoder (hidden {args.hidden_size}) to {args.out}")


if __name__ == "__main__":
    main()
