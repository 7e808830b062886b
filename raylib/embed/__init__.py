"""Batch embedding on Ray Data, and the vectors the other stages need.

    run.py       the driver: pieces -> tokenize.py (tasks) -> actor.py (model actors) -> writer.py (commit)
    store.py     the output directory: vectors per piece, bad rows, manifest of finished pieces
    vectors.py   the embedding column in each output dtype (float32, float16, int8, binary) and back to floats
    calibrate.py an int8 output's calibration ranges, computed once per output from a sample of its input
    progress.py  the live progress line: pieces and rows of the total, ETA, rows/s, tokens/s
    texts.py     vectors of a set of texts: in process, or through run.py when there are many
    search.py    nearest neighbours by inner product (exact in chunks, or faiss)
    index.py     after the job: the vectors as a LanceDB table with an ANN index, opened for `raylib search`
"""
