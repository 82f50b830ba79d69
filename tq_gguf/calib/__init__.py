"""Calibration for the turbo KV-cache types, carried in the GGUF (``turbo.*`` keys)."""
