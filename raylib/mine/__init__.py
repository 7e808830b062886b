"""Hard-negative mining. run.py: the driver; work.py: the work folder's layout and text keys; inputs.py: pairs and
corpus into buckets; index.py: the faiss index; search.py: the search actors and the positive-aware filter;
shards.py: negative texts and the triplet shards."""
