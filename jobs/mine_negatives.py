"""Mine hard negatives for (query, document) pairs: triplet shards for the contrastive job.

    python jobs/mine_negatives.py --config jobs/configs/mine_negatives_cpu.yaml
    ray job submit --working-dir . -- python jobs/mine_negatives.py --config jobs/configs/mine_negatives_cpu.yaml
"""

import sys

from raylib.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("mine"))
