"""Run a recipe: its stages (pairs, pretrain, train, mine, eval) in order, each feeding the next by reference;
finished stages are skipped, a failed one resumes; ends with a table and a chart of every stage's metrics.

    python jobs/recipe.py --config jobs/recipes/nomic_embed_cpu.yaml
    ray job submit --working-dir . -- python jobs/recipe.py --config jobs/recipes/nomic_embed_gpu.yaml
"""

from raylib.cli import end_process, run_job

if __name__ == "__main__":
    end_process(run_job("recipe"))
