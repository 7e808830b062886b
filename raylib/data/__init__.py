"""Data: what the stages read, and the rules for bad rows.

    sources.py        input pieces (parquet row groups, jsonl byte ranges), row checks, the one Ray Data reader
    tokens.py         token ids of a piece's good rows (light: no torch or transformers)
    mlm.py            MLM data: tokenised pieces, window packing, 80/10/10 masking
    pairs.py          training pairs (query, document, negatives) read and checked by Ray Data
    beir.py           BEIR-format retrieval sets
    sample_corpus.py  the sample corpus of real text; sample_sets.py retrieval sets and sample_pairs.py
                      training pairs built from it
"""
