"""Batch-embed parquet/jsonl files with Ray Data.

    python jobs/embed.py --config jobs/configs/embed.yaml
    ray job submit --working-dir . -- python jobs/embed.py --config jobs/configs/embed.yaml
"""

from raylib.cli import end_process, run_job

if __name__ == "__main__":
    end_process(run_job("embed"))
