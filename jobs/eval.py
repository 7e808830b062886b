"""Retrieval evaluation (NDCG@10, MRR@10, recall@1/10/100) of models, checkpoints or context lengths.

    python jobs/eval.py --config jobs/configs/eval.yaml
    ray job submit --working-dir . -- python jobs/eval.py --config jobs/configs/eval.yaml
"""

import sys

from raylib.config import EvalJobConfig, job_main
from raylib.eval.run import run_eval

if __name__ == "__main__":
    sys.exit(job_main(__doc__.splitlines()[0], EvalJobConfig, run_eval))
