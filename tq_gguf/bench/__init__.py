"""Benchmarks through the patched llama-cpp-python: quality (PPL/KLD),
speed at depth, needle retrieval; tables, versioned JSON, Markdown, plots."""
