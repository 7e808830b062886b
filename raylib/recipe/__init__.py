"""Recipes: several jobs run as one chain from one YAML file, each stage's output feeding the next by reference.

    config.py   the recipe schema: stages in order, each one job's config; ${...} references resolved and every
                stage checked before any runs
    record.py   what each stage was last run with (its fingerprint), so a re-run skips finished stages
    stages.py   each job as a stage: run it, and tell whether a finished stage's product is still there
    report.py   the table and the chart of the models' metrics by stage
    run.py      the driver: run or skip each stage, then the table and the chart
"""
