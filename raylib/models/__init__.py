"""Models: plain PyTorch + transformers, taking plain arguments (no job configs).

    spec.py             a model directory: resolve (bundled, local, bucket), check, read/write the ST layout
    embedder.py         Embedder: tokenizer + encoder + pooling + prefixes + Matryoshka, one device
    tokenizer.py        PromptTokenizer: prefixes and truncation on the `tokenizers` library alone (light)
    biencoder.py        the contrastive model (encoder, pooling, logit scale) and its export
    nomic_bert.py       nomic-bert config, encoder and MLM head; rotary.py, attention.py its parts
    pooling.py          mean / cls / last-token / latent pooling, prompt tokens left out on request
    latent_attention.py NV-Embed's latent-attention head; st_modules.py its sentence-transformers module
    bidirectional.py    decoder LLMs without the causal mask; lora.py LoRA adapters and merging (peft)
    batching.py         token-budget batches; precision.py fp32 / bf16 / auto
    tiny_decoder.py     small random Mistral/Llama/Qwen2 with the bundled tokenizer (CPU configs, tests)
"""
