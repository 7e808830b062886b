"""Pretrain nomic-bert with masked language modelling on Ray Train.

    python jobs/pretrain_mlm.py --config jobs/configs/pretrain_mlm_cpu.yaml
    ray job submit --working-dir . -- python jobs/pretrain_mlm.py --config jobs/configs/pretrain_mlm_2048.yaml
"""

import sys

from raylib.config import MlmJobConfig, job_main
from raylib.train.run import run_mlm

if __name__ == "__main__":
    sys.exit(job_main(__doc__.splitlines()[0], MlmJobConfig, run_mlm))
