# The front door: `make demo` runs the main job on an embedded local Ray; `make test` runs the test suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
QUERY ?= how do I read a file line by line

.PHONY: install demo test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: install
	$(BIN)/python -m raylib.data.sample_corpus --out examples/data/docs --shards 4 --limit 2000
	rm -rf out/embeddings out/index
	$(BIN)/python jobs/embed.py --config jobs/configs/embed.yaml
	$(BIN)/raylib search --index out/index --query "$(QUERY)" --top 5

test: install
	$(BIN)/python -m pytest -q --durations=15

# a few minutes: the layer contract, configs, tokenizer, models, the embed pipeline (no training, no serving)
test-fast: install
	$(BIN)/python -m pytest -q tests/test_layers.py tests/test_config.py tests/test_cluster_config.py \
		tests/test_tokenizer.py tests/test_embedder.py tests/test_contrastive_parts.py tests/test_embed_pipeline.py

bench: install
	$(BIN)/python bench/embed_throughput.py
	$(BIN)/python bench/serve_load.py
	$(BIN)/python bench/mlm_throughput.py
	$(BIN)/python bench/contrastive.py

clean:
	rm -rf out examples/data
