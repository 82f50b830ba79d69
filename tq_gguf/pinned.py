"""The pinned upstream: one version, upgraded deliberately.

llama.cpp comes vendored inside the llama-cpp-python sdist, so one download
gives both the tools' sources and the Python bindings that match them.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Pin:
    dist: str            # PyPI distribution name
    version: str
    sha256: str          # of the sdist file
    llama_cpp_commit: str  # vendored llama.cpp commit (vendor/llama.cpp)

    @property
    def sdist_name(self) -> str:
        return f"{self.dist.replace('-', '_')}-{self.version}.tar.gz"

    @property
    def top_dir(self) -> str:
        """Top-level directory inside the sdist archive."""
        return f"{self.dist.replace('-', '_')}-{self.version}"


LLAMA_CPP_PYTHON = Pin(
    dist="llama-cpp-python",
    version="0.3.36",
    sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    llama_cpp_commit="0c1e57098bba",
)

# Inside the extracted sdist.
VENDOR_DIR = "vendor/llama.cpp"
# Where the files of cuda/ are copied (relative to the sdist root) before the
# patch series is applied; ggml-cuda's CMakeLists globs *.cu and *.cuh there.
CUDA_DEST = "vendor/llama.cpp/ggml/src/ggml-cuda"

# Tools every build produces (CMake target == binary name).
TOOLS = (
    "llama-server",
    "llama-cli",
    "llama-perplexity",
    "llama-bench",
    "llama-quantize",
    "test-backend-ops",
)
# Shared libraries the Python bindings load (target names).
LIBS = ("llama", "ggml", "ggml-base", "ggml-cpu")
