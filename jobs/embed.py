"""Batch-embed parquet/jsonl files with Ray Data.

    python jobs/embed.py --config jobs/configs/embed.yaml
    ray job submit --working-dir . -- python jobs/embed.py --config jobs/configs/embed.yaml
"""

import sys

from raylib.config import EmbedJobConfig, job_main
from raylib.embed.pipeline import run_embed


def run(config: EmbedJobConfig) -> None:
    print(run_embed(config).line(), flush=True)


if __name__ == "__main__":
    sys.exit(job_main(__doc__.splitlines()[0], EmbedJobConfig, run))
