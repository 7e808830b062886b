"""Batch-embed parquet/jsonl files with Ray Data.

    python jobs/embed.py --config jobs/configs/embed.yaml
    ray job submit --working-dir . -- python jobs/embed.py --config jobs/configs/embed.yaml
"""

import sys

from raylib.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("embed"))
