"""PromptTokenizer: the model's tokenizer with the input type's prefix and truncation, run by the `tokenizers`
library alone.

It imports neither torch nor transformers, so a process that only tokenises (the embed job's tokenising tasks)
starts in a fraction of a second, and it pickles to the backend's JSON. `from_spec` takes
the backend from transformers' tokenizer of the model directory, as transformers configured it (special
tokens, post-processor), and calls it the way transformers does: no padding, longest-first truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tokenizers import Tokenizer

from raylib.config import ConfigError

if TYPE_CHECKING:
    from raylib.models.spec import ModelSpec


class PromptTokenizer:
    """Token ids of texts with an input type's prefix, truncated to the model's max length."""

    def __init__(self, backend_json: str, prefixes: dict[str, str], max_length: int, include_prompt: bool,
                 pad_id: int, special_ids: Sequence[int], truncation_side: str = "right",
                 split_special_tokens: bool = False):
        self.arguments = (backend_json, prefixes, max_length, include_prompt, pad_id, tuple(special_ids),
                          truncation_side, split_special_tokens)  # what it pickles to
        self.prefixes, self.include_prompt = prefixes, include_prompt
        self.pad_id, self.special_ids = pad_id, frozenset(special_ids)
        # two backends, so that calls from several threads never change a shared truncation setting
        self.whole, self.truncating = Tokenizer.from_str(backend_json), Tokenizer.from_str(backend_json)
        for backend in (self.whole, self.truncating):
            backend.no_padding()
            backend.no_truncation()
            backend.encode_special_tokens = split_special_tokens
        self.truncating.enable_truncation(max_length, direction=truncation_side)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> PromptTokenizer:
        """The tokenizer of the model directory `spec` names, with its prefixes and max length."""
        return cls.from_directory(spec.directory, spec.prefixes, spec.max_length, spec.include_prompt,
                                  spec.trust_remote_code, spec.source)

    @classmethod
    def from_directory(cls, directory, prefixes: dict[str, str], max_length: int, include_prompt: bool = True,
                       trust_remote_code: bool = False, source: str | None = None,
                       key: str = "model.path") -> PromptTokenizer:
        """The tokenizer saved in `directory` (shown as `source`, from config key `key`, in errors), with these
        prefixes and max length."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
        if not tokenizer.is_fast:
            raise ConfigError(
                f"{key}: {source or directory} has no fast tokenizer (tokenizer.json); add one where "
                "transformers can convert it: AutoTokenizer.from_pretrained(path, use_fast=True).save_pretrained(path)"
            )
        return cls(
            tokenizer.backend_tokenizer.to_str(), dict(prefixes), max_length, include_prompt,
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0, tokenizer.all_special_ids,
            tokenizer.truncation_side, bool(tokenizer.split_special_tokens),
        )

    def __reduce__(self):
        return PromptTokenizer, self.arguments

    def __call__(self, texts: Sequence[str], input_type: str = "document", truncate: bool = True,
                 special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text with the input type's prefix, truncated to max_length unless `truncate` is off;
        `special_tokens` off leaves out the start and end tokens (text to be packed, as for MLM)."""
        prefix = self.prefixes[input_type]
        backend = self.truncating if truncate else self.whole
        encodings = backend.encode_batch([prefix + text for text in texts], add_special_tokens=special_tokens)
        return [encoding.ids for encoding in encodings]

    def prompt_length(self, input_type: str) -> int:
        """Leading tokens that pooling leaves out for this input type: its prefix's tokens (with the start
        token, as sentence-transformers counts them) when the model excludes prompts, else 0."""
        prefix = self.prefixes[input_type]
        if self.include_prompt or not prefix:
            return 0
        ids = self.whole.encode(prefix).ids
        return len(ids) - 1 if ids and ids[-1] in self.special_ids else len(ids)

    @property
    def vocab_size(self) -> int:
        """Token ids below this are valid (added tokens included)."""
        return self.whole.get_vocab_size(with_added_tokens=True)
