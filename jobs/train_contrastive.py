"""Contrastive (bi-encoder) training on Ray Train: InfoNCE with in-batch negatives from every worker and hard negatives.

    python jobs/train_contrastive.py --config jobs/configs/contrastive_finetune_cpu.yaml
    ray job submit --working-dir . -- python jobs/train_contrastive.py --config jobs/configs/<config>.yaml
"""

import sys

from raylib.config import ContrastiveJobConfig, job_main
from raylib.train.run import run_contrastive

if __name__ == "__main__":
    sys.exit(job_main(__doc__.splitlines()[0], ContrastiveJobConfig, run_contrastive))
