"""Models: plain PyTorch + transformers, taking plain arguments (no job configs).

    spec.py             a model directory: resolve (bundled, local, bucket), check, read/write the ST layout
    embedder.py         Embedder: tokenizer + encoder + pooling + prefixes + Matryoshka, one device
    tokenizer.py        PromptTokenizer: prefixes and truncation on the `tokenizers` library alone (light)
    biencoder.py        the contrastive model (encoder, pooling, logit scale) and its export
    encoder.py          the encoder of a directory: AutoModel, every nomic-bert layout into our class
    nomic_bert.py       nomic-bert for training (model_type raylib_nomic_bert); rotary.py, attention.py its parts
    nomic_layouts.py    nomic-bert's layouts (transformers' native, nomic's remote code, ours), read and export
    nomic_bert_remote.py  the remote code (auto_map) shipped in exports, for transformers without nomic_bert
    pooling.py          mean / cls / last-token / latent pooling, prompt tokens left out on request
    latent_attention.py NV-Embed's latent-attention head; st_modules.py its sentence-transformers module
    bidirectional.py    decoder LLMs without the causal mask; lora.py LoRA adapters and merging (peft)
    batching.py         token-budget batches; precision.py fp32 / bf16 / auto
    tiny_decoder.py     small random Mistral/Llama/Qwen2 with the bundled tokenizer (CPU configs, tests)
"""
