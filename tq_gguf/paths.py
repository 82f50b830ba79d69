"""Where tq-gguf keeps what it downloads and builds.

``$TQ_GGUF_HOME`` (default ``$XDG_CACHE_HOME/tq-gguf`` or ``~/.cache/tq-gguf``)::

    sdist/     the pinned llama-cpp-python sdist, checksum-verified
    src/       the patched source tree (files rewritten only when their bytes change)
    build/     one CMake build directory per variant (cpu, cuda-sm90, ...)
    logs/      full compiler output of each stage
    assets/    models and text prepared for the demo
    active.json  which variant the last `tq-gguf build` produced
"""

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("TQ_GGUF_HOME")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "tq-gguf").resolve()


def repo_root() -> Path:
    """The checkout holding patches/ and cuda/ (this package's parent)."""
    return Path(__file__).resolve().parent.parent


def patches_dir() -> Path:
    return Path(os.environ.get("TQ_GGUF_PATCHES", repo_root() / "patches"))


def cuda_dir() -> Path:
    return Path(os.environ.get("TQ_GGUF_CUDA", repo_root() / "cuda"))


def sdist_dir() -> Path:
    return home() / "sdist"


def src_dir() -> Path:
    return home() / "src"


def build_dir(variant: str) -> Path:
    return home() / "build" / variant


def logs_dir() -> Path:
    return home() / "logs"


def assets_dir() -> Path:
    return home() / "assets"


def active_file() -> Path:
    return home() / "active.json"
