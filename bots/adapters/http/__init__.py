"""The OpenAI-compatible HTTP API (api.py) and its per-client limits (limits.py)."""
