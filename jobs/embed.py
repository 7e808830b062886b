"""Batch-embed parquet/jsonl files with Ray Data.

    python jobs/embed.py --config jobs/configs/embed.yaml
    ray job submit --working-dir . -- python jobs/embed.py --config jobs/configs/embed.yaml
"""

import sys

from raylib.config import EmbedJobConfig, job_main
from raylib.embed.run import run_embed

if __name__ == "__main__":
    sys.exit(job_main(__doc__.splitlines()[0], EmbedJobConfig, run_embed))
