"""tq-gguf: compressed KV caches for llama.cpp.

Three parts meet in the GGUF file: this Python package (build, convert,
calibrate, benchmark), the patch series in ``patches/`` + ``cuda/`` applied to a
pinned llama.cpp, and the benchmark harness driven through llama-cpp-python.
"""

__version__ = "0.1.0"
