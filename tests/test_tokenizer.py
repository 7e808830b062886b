"""PromptTokenizer: the `tokenizers` backend alone gives transformers' token ids, pickles, and stays light."""

import dataclasses
import json
import pickle
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from raylib.config import ConfigError
from raylib.models.spec import resolve_spec
from raylib.models.tokenizer import PromptTokenizer

SPEC = resolve_spec(query_prefix="search_query: ", include_prompt=False)


def test_token_ids_match_transformers_with_prefix_and_truncation(documents):
    texts = [doc["text"] for doc in documents[:200]]
    texts += ["word " * 600, "", "[CLS] marks [SEP] inside", "héllo wörld 東京"]
    ours, reference = PromptTokenizer.from_spec(SPEC), AutoTokenizer.from_pretrained(SPEC.directory)
    for input_type in ("query", "document"):
        prefixed = [SPEC.prefixes[input_type] + text for text in texts]
        assert ours(texts, input_type) == reference(prefixed, truncation=True, max_length=256)["input_ids"]
        whole = ours(texts, input_type, truncate=False)
        assert whole == reference(prefixed, verbose=False)["input_ids"]
        assert max(map(len, whole)) > 256 == max(map(len, ours(texts, input_type)))


def test_prompt_length_vocab_and_padding_come_from_the_model():
    tokenizer = PromptTokenizer.from_spec(SPEC)
    assert tokenizer.prompt_length("query") == 5  # [CLS] search _ query : (the closing [SEP] is not counted)
    assert tokenizer.prompt_length("document") == 0
    assert (tokenizer.vocab_size, tokenizer.pad_id) == (30522, 0)


def test_pickles_to_the_same_tokenizer(documents):
    texts = [doc["text"] for doc in documents[:20]]
    tokenizer = PromptTokenizer.from_spec(SPEC)
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert copy(texts, "query") == tokenizer(texts, "query")
    assert copy.prompt_length("query") == tokenizer.prompt_length("query")


def test_tokenising_stage_imports_neither_torch_nor_transformers():
    # the embed job's tokenising tasks start in fresh worker processes next to the model actors
    check = "import sys, raylib.embed.tokenize; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout == "[]\n"


PYTHON_ONLY_TOKENIZER = '''
from transformers import PreTrainedTokenizer


class WordTokenizer(PreTrainedTokenizer):
    def __init__(self, **kwargs):
        self.vocab = {"[PAD]": 0, "[UNK]": 1}
        super().__init__(pad_token="[PAD]", unk_token="[UNK]", **kwargs)

    @property
    def vocab_size(self):
        return len(self.vocab)

    def get_vocab(self):
        return dict(self.vocab)

    def _tokenize(self, text):
        return text.split()

    def _convert_token_to_id(self, token):
        return self.vocab.get(token, 1)
'''


def test_a_model_without_a_fast_tokenizer_is_refused_with_the_fix(tmp_path):
    (tmp_path / "word_tokenizer.py").write_text(PYTHON_ONLY_TOKENIZER)
    auto_map = {"auto_map": {"AutoTokenizer": ["word_tokenizer.WordTokenizer", None]}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(auto_map))
    spec = dataclasses.replace(SPEC, directory=tmp_path, source=str(tmp_path), trust_remote_code=True)
    refused = r"model.path: .* has no fast tokenizer \(tokenizer.json\); .*save_pretrained\(path\)"
    with pytest.raises(ConfigError, match=refused):
        PromptTokenizer.from_spec(spec)


def test_mlm_reading_step_tokenises_like_transformers_without_special_tokens(tmp_path, documents):
    from raylib.config import InputConfig
    from raylib.data.mlm import text_pieces, text_tokenizer
    from raylib.data.tokens import text_tokens

    rows = [{"text": doc["text"]} for doc in documents[:50]] + [{"text": "word " * 600}, {"text": ""}]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = InputConfig(path=str(tmp_path), id_column=None)
    (piece,) = text_pieces(config, "input")
    tokenizer = text_tokenizer(str(SPEC.directory))
    table = text_tokens(piece, config, tokenizer)
    reference = AutoTokenizer.from_pretrained(SPEC.directory)
    expected = reference([row["text"] for row in rows[:-1]], add_special_tokens=False, verbose=False)["input_ids"]
    assert table.column("input_ids").to_pylist() == [*expected, None]  # whole texts, no [CLS]/[SEP]
    assert table.column("_error").to_pylist()[-1] == "text is empty"
