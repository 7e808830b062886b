"""Batch embedding on Ray Data, and the vectors the other stages need.

    run.py       the driver: pieces -> tokenize.py (tasks) -> actor.py (model actors) -> writer.py (commit)
    store.py     the output directory: vectors per piece, bad rows, manifest of finished pieces
    texts.py     vectors of a set of texts: in process, or through run.py when there are many
    search.py    nearest neighbours by inner product (exact in chunks, or faiss)
"""
