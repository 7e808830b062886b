"""Contrastive (bi-encoder) training on Ray Train: InfoNCE with in-batch negatives from every worker and hard negatives.

    python jobs/train_contrastive.py --config jobs/configs/contrastive_finetune_cpu.yaml
    ray job submit --working-dir . -- python jobs/train_contrastive.py --config jobs/configs/<config>.yaml
"""

from raylib.cli import end_process, run_job

if __name__ == "__main__":
    end_process(run_job("train"))
