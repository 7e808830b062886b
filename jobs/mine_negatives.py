"""Mine hard negatives for (query, document) pairs: triplet shards for the contrastive job.

    python jobs/mine_negatives.py --config jobs/configs/mine_negatives_cpu.yaml
    ray job submit --working-dir . -- python jobs/mine_negatives.py --config jobs/configs/mine_negatives_cpu.yaml
"""

from raylib.cli import end_process, run_job

if __name__ == "__main__":
    end_process(run_job("mine"))
