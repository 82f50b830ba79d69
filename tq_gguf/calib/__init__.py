"""Calibration for the turbo KV-cache types, carried in the GGUF (``turbo.*`` keys)."""

# Defaults of `calibrate` and `convert --calibrate`. Post-RoPE key statistics depend on
# the positions seen: windows as long as the evaluation's (2048) fitted SmolLM2 far better
# than windows of 1024 (docs/calibration.md, "The capture window").
DEFAULT_TOKENS = 16384   # calibration tokens
DEFAULT_CTX = 2048       # capture window and validation context
