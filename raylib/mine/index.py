"""The candidate documents' faiss index, built once in a Ray task from the embed job's output and handed to the
search actors through the object store (faiss's serialised bytes). Vectors are added under their text keys, and
the index can give a vector back by key (the positive's, for its score): exact inner product (IndexFlatIP in an
IndexIDMap2) below `exact_below` vectors, else IndexIVFFlat with nlist lists (default 4 x sqrt(n)) trained on
a uniform sample of nlist x train_per_list vectors, with a hash-table direct map."""

import math
from itertools import chain

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from raylib.config import MineSearchConfig
from raylib.mine.work import float_vectors
from raylib.storage import resolve

READ_ROWS = 65536  # vectors read (and added) at a time


def _batches(uri: str):
    """(batches of (keys, float32 vectors) of the embed output at `uri`, READ_ROWS at a time; its row count)."""
    fs, root = resolve(uri)
    dataset = pads.dataset(root, filesystem=fs, format="parquet")
    batches = ((batch.column("key").to_numpy(), float_vectors(pa.Table.from_batches([batch])))
               for batch in dataset.to_batches(batch_size=READ_ROWS))
    return batches, dataset.count_rows()


def empty_index(dimensions: int, documents: int, settings: MineSearchConfig) -> faiss.Index:
    """The index for `documents` vectors, untrained: flat below exact_below, else IVF."""
    if documents < settings.exact_below:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dimensions))
    lists = min(settings.nlist or int(4 * math.sqrt(documents)), documents)
    return faiss.IndexIVFFlat(faiss.IndexFlatIP(dimensions), dimensions, lists, faiss.METRIC_INNER_PRODUCT)


def build_index(vectors_uri: str, settings: MineSearchConfig, seed: int = 0) -> np.ndarray:
    """The serialised index of every vector at `vectors_uri` (at least one; faiss.deserialize_index opens it)."""
    faiss.omp_set_num_threads(max(1, math.ceil(settings.cpus_per_actor)))
    batches, documents = _batches(vectors_uri)
    first = next(batches)
    index = empty_index(first[1].shape[1], documents, settings)
    if index.is_trained:
        batches = chain([first], batches)
    else:  # IVF: a first pass draws the training sample
        share = min(1.0, index.nlist * settings.train_per_list / documents)
        rng = np.random.default_rng(seed)
        index.train(np.concatenate([vectors[rng.random(len(vectors)) < share]
                                    for _, vectors in chain([first], batches)]))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        batches, _ = _batches(vectors_uri)
    for keys, vectors in batches:
        index.add_with_ids(np.ascontiguousarray(vectors), keys.astype(np.int64))
    return faiss.serialize_index(index)
