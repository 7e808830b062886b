"""Serving on Ray Serve. app.py: the application (OpenAI ingress + one batched deployment per model);
openai_api.py: the API's rules as plain functions; local.py: `serve run` for tests and benchmarks."""
