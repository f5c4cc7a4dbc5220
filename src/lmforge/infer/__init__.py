"""Inference: sampling and KV-cached generation (used by the CLI and, later, the server)."""
