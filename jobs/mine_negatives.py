"""Mine hard negatives for (query, document) pairs: triplet shards for the contrastive job.

    python jobs/mine_negatives.py --config jobs/configs/mine_negatives_cpu.yaml
    ray job submit --working-dir . -- python jobs/mine_negatives.py --config jobs/configs/mine_negatives_cpu.yaml
"""

import sys

from raylib.config import MineJobConfig, job_main
from raylib.mine.run import run_mining

if __name__ == "__main__":
    sys.exit(job_main(__doc__.splitlines()[0], MineJobConfig, run_mining))
