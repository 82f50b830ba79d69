"""Import the patched llama-cpp-python before numpy.

llama_cpp loads llama.cpp's shared libraries, then imports numpy. Loading
them after numpy crashed model loading with CUDA (segfault in
llama_model_load_from_file; numpy 2.5.2 wheel, H100 host), so commands that
use the bindings import them first. Keep this module free of numpy.
"""

from __future__ import annotations


def load_first():
    """The llama_cpp module, or None when it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return llama_cpp
