"""Hard-negative mining. run.py: the driver (embed, search, positive-aware filter, triplet shards)."""
