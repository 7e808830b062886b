"""Train, batch-embed and serve text-embedding models on Ray. Each folder is a floor that imports only from the
floors below it (pyproject.toml's [tool.importlinter], checked by the tests):

    train/ eval/ mine/   the stages that use the batch-embedding engine and the models; each drives from run.py
    embed/               batch embedding on Ray Data (a stage of its own, and the engine eval and mine reuse)
    data/                input pieces and their one Ray Data reader, bad-row rules, pairs, MLM data, samples
    models/              plain PyTorch + transformers: model directories, encoders, pooling, LoRA, tokenizer
    config.py runtime.py typed YAML configs with one-line errors; embedded Ray or RAY_ADDRESS
    storage.py           local paths and object-storage URIs (s3://, gs://), local copies of remote directories
    console.py           what a person sees: Ray's output into a job's log file, the terminal kept for progress
"""
