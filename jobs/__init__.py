"""The `ray job submit` entrypoints: each parses its YAML, calls its stage's driver and prints the summary."""
