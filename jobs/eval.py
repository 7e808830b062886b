"""Retrieval evaluation (NDCG@10, MRR@10, recall@1/10/100) of models, checkpoints or context lengths.

    python jobs/eval.py --config jobs/configs/eval.yaml
    ray job submit --working-dir . -- python jobs/eval.py --config jobs/configs/eval.yaml
"""

from raylib.cli import end_process, run_job

if __name__ == "__main__":
    end_process(run_job("eval"))
