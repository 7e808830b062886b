"""Pretrain nomic-bert with masked language modelling on Ray Train.

    python jobs/pretrain_mlm.py --config jobs/configs/pretrain_mlm_cpu.yaml
    ray job submit --working-dir . -- python jobs/pretrain_mlm.py --config jobs/configs/pretrain_mlm_2048.yaml
"""

from raylib.cli import end_process, run_job

if __name__ == "__main__":
    end_process(run_job("pretrain"))
