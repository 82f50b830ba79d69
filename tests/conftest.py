import os
import shutil
from pathlib import Path

import pytest

from tq_gguf import build, fetch, paths, pinned, tools
from tq_gguf.tinymodel import TinyShape, sample_text, write_tiny_llama


@pytest.fixture(scope="session")
def sdist() -> Path:
    """The pinned sdist from the build cache (fetched by `tq-gguf build`)."""
    return fetch.get_sdist(paths.sdist_dir())


@pytest.fixture(scope="session")
def pristine(sdist, tmp_path_factory) -> Path:
    """A freshly extracted, unpatched sdist tree (read-only use: copy it)."""
    return fetch.extract(sdist, tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def fresh_tree(pristine, tmp_path) -> Path:
    dst = tmp_path / "tree"
    shutil.copytree(pristine, dst, symlinks=True)
    return dst


@pytest.fixture
def scratch_home(tmp_path, sdist, monkeypatch) -> Path:
    """An empty TQ_GGUF_HOME that already holds the (verified) sdist."""
    home = tmp_path / "home"
    (home / "sdist").mkdir(parents=True)
    os.symlink(sdist, home / "sdist" / sdist.name)
    monkeypatch.setenv("TQ_GGUF_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def series_version() -> str:
    return build.tq_version_string(build.series_info()[2])


@pytest.fixture(scope="session")
def built(series_version) -> Path:
    """bin/ of the active build; fails (never skips) when nothing is built."""
    d = tools.bin_dir()
    missing = [t for t in pinned.TOOLS if not (d and (d / t).exists())]
    assert not missing, f"not built: {missing}; run `tq-gguf build` first"
    return d


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf", TinyShape())


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("text") / "text.txt"
    p.write_text(sample_text(16384))
    return p


@pytest.fixture(scope="session")
def demo_assets() -> None:
    """The demo's model and text, fetched by `tq-gguf assets` (scripts/test.sh); fails, never downloads."""
    from tq_gguf import assets
    d = paths.assets_dir()
    files = [d / "SmolLM2-135M-Instruct.Q4_1.gguf", *(d / "handbook" / f"handbook.{k}.txt"
                                                       for k in ("full", "calib", "test"))]
    missing = [str(f) for f in files if not f.exists()]
    assert not missing, f"not fetched: {missing}; run `tq-gguf assets` first"
    assert assets.smollm2(lambda m: None).exists()


@pytest.fixture(scope="session")
def host_lib(tmp_path_factory):
    """build(source, name, *flags): a harness that includes CUDA-free headers of cuda/, built for
    the host and loaded (the CUDA kernels' shared code checked without a GPU)."""
    import ctypes
    import subprocess
    cxx = shutil.which("c++") or shutil.which("g++")
    assert cxx, "a C++ compiler is needed (the README's requirements)"
    cuda = Path(__file__).resolve().parent.parent / "cuda"

    def build(source: str, name: str, *flags: str):
        d = tmp_path_factory.mktemp(name)
        (d / f"{name}.cpp").write_text(source)
        lib = d / f"lib{name}.so"
        subprocess.run([cxx, "-std=c++17", "-O2", *flags, "-shared", "-fPIC", f"-I{cuda}", str(d / f"{name}.cpp"),
                        "-o", str(lib)], check=True, capture_output=True, text=True)
        return ctypes.CDLL(str(lib))
    return build
