"""Training on Ray Train.

    run.py          the drivers (run_mlm, run_contrastive): check, start Ray, fit, publish, summary
    mlm.py          the MLM pretraining loop; contrastive.py the contrastive loop
    harness.py      the loop skeleton both share: restore, update, log, report, checkpoint
    streams.py      a worker's batches from its dataset shard, in step with the other workers
    engine.py       DDP / DeepSpeed ZeRO: accumulate, step, save, load
    metrics.py      where the run lives; metrics.jsonl and TensorBoard; step times
    distributed.py  sums across workers, threads per worker
    losses.py       InfoNCE with negatives from every worker, hard negatives, Matryoshka; grad_cache.py GradCache
"""
