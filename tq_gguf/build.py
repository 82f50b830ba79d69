"""`tq-gguf build`: pinned sdist -> patched tree -> llama.cpp tools + bindings.

Stages (each skipped when its inputs are unchanged):

1. sdist      fetch through pip (or take ``--sdist FILE``), verify sha256
2. patch      extract to a staging dir, copy cuda/, apply patches/ in order,
              then sync into src/ rewriting only changed files
3. configure  CMake (Ninja) in build/<variant>/, re-run when the flags change
4. compile    ninja for the tools and shared libraries
5. bindings   install the patched llama_cpp package (no second compile:
              ``LLAMA_BUILD=OFF``) and copy the libraries it loads into it
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, fetch, paths, patchset, pinned
from .progress import Stages, StageError, run_logged

BINDINGS_STAMP = "TQ_GGUF_BUILD.json"


@dataclass
class BuildConfig:
    cuda: bool = False
    cuda_arch: str = "90"
    native: bool = False
    jobs: int = field(default_factory=lambda: os.cpu_count() or 2)
    bindings: bool = True
    sdist: Path | None = None
    targets: tuple[str, ...] = pinned.TOOLS
    build_type: str = "Release"
    src_pack: Path | None = None
    fa_quants: str | None = None   # GGML_CUDA_FA_QUANTS (None: the series default)

    @property
    def variant(self) -> str:
        if self.cuda:
            arch = "-".join(a.strip() for a in self.cuda_arch.replace(",", ";").split(";") if a.strip())
            return f"cuda-sm{arch}" + ("-native" if self.native else "")
        return "cpu-native" if self.native else "cpu"

    def cmake_args(self, tq_version: str) -> list[str]:
        args = [
            "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={self.build_type}",
            "-DBUILD_SHARED_LIBS=ON",
            # Libraries and tools share bin/; $ORIGIN keeps them loadable
            # wherever they are copied together (the bindings' lib/).
            "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
            "-DCMAKE_INSTALL_RPATH=$ORIGIN",
            "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
            "-DLLAMA_BUILD_TESTS=ON", "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
            f"-DLLAMA_BUILD_COMMIT={pinned.LLAMA_CPP_PYTHON.llama_cpp_commit}",
            f"-DTQ_GGUF_VERSION={tq_version}",
        ]
        # Never native by default: hosts that advertise AMX die with
        # "Illegal instruction" on a -march=native build (--native opts in).
        args.append("-DGGML_NATIVE=" + ("ON" if self.native else "OFF"))
        if not self.native:
            args += ["-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"]
        if self.cuda:
            args += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={self.cuda_arch}"]
            if self.fa_quants:
                args.append(f"-DGGML_CUDA_FA_QUANTS={self.fa_quants}")
        return args


def series_info() -> tuple[list[patchset.Patch], list[Path], str]:
    patches = patchset.load_series(paths.patches_dir())
    cuda = patchset.cuda_files(paths.cuda_dir())
    return patches, cuda, patchset.series_hash(patches, cuda, paths.cuda_dir())


def tq_version_string(series_hash: str) -> str:
    return f"{__version__}+{series_hash[:12]}"


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(p: Path, data: dict) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, p)


SRC_STAMP = ".tq-build.json"


def prepare_source(sdist: Path, patches, cuda, series_hash: str, stage) -> bool:
    """Bring src/ to pristine sdist + series. Returns True if anything changed."""
    src = paths.src_dir()
    want = {"sdist_sha256": pinned.LLAMA_CPP_PYTHON.sha256, "series": series_hash,
            "patches": [p.name for p in patches]}
    if _read_json(src / SRC_STAMP) == want:
        return False
    staging = paths.home() / "staging"
    stage.log(f"extracting {sdist.name}")
    root = fetch.extract(sdist, staging)
    try:
        patchset.apply_series(root, patches, cuda, paths.cuda_dir(), log=stage.log)
        n = fetch.sync_tree(root, src)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_json(src / SRC_STAMP, want)
    stage.log(f"{len(patches)} patch(es), {len(cuda)} cuda file(s); {n} file(s) changed in {src}")
    return True


# Not needed to build: vocab test models, docs, media (keeps packs small).
PACK_EXCLUDE = ("vendor/llama.cpp/models/", "vendor/llama.cpp/docs/", "vendor/llama.cpp/media/",
                "vendor/llama.cpp/.github/", "docs/", ".github/")


def pack_source(out: Path) -> Path:
    """Write the patched src/ (minus PACK_EXCLUDE) as .tar.xz, for offline machines."""
    import tarfile
    src = paths.src_dir()
    stamp = _read_json(src / SRC_STAMP)
    _, _, h = series_info()
    if stamp.get("series") != h:
        raise StageError("the patched source is missing or stale: run `tq-gguf build` first")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def keep(ti: tarfile.TarInfo):
        rel = ti.name.split("/", 1)[1] if "/" in ti.name else ""
        return None if any(rel.startswith(x) for x in PACK_EXCLUDE) else ti

    with tarfile.open(out, "w:xz", preset=6) as tar:
        tar.add(src, arcname="src", filter=keep)
    return out


def unpack_source(pack: Path, series_hash: str, stage) -> bool:
    """Bring src/ to the contents of a pack made by pack_source() for this series."""
    import tarfile
    staging = paths.home() / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(pack, "r:*") as tar:
            tar.extractall(staging, filter="data")
        stamp = _read_json(staging / "src" / SRC_STAMP)
        if stamp.get("series") != series_hash or stamp.get("sdist_sha256") != pinned.LLAMA_CPP_PYTHON.sha256:
            raise StageError(f"{pack} carries series {stamp.get('series', '?')[:12]}, "
                             f"this checkout has {series_hash[:12]}: make a new pack")
        if _read_json(paths.src_dir() / SRC_STAMP) == stamp:
            return False
        n = fetch.sync_tree(staging / "src", paths.src_dir())
        stage.log(f"{n} file(s) changed in {paths.src_dir()}")
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def configure(cfg: BuildConfig, tq_version: str, stage) -> bool:
    bdir = paths.build_dir(cfg.variant)
    args = cfg.cmake_args(tq_version)
    stamp = bdir / "tq-configure.json"
    if (bdir / "CMakeCache.txt").exists() and _read_json(stamp).get("args") == args:
        return False
    if shutil.which("cmake") is None:
        raise StageError("cmake not found: apt-get install cmake (or pip install cmake)")
    if shutil.which("ninja") is None:
        raise StageError("ninja not found: apt-get install ninja-build (or pip install ninja)")
    if cfg.cuda and shutil.which("nvcc") is None and not os.environ.get("CUDACXX"):
        raise StageError("--cuda needs nvcc on PATH (or CUDACXX set)")
    cmd = ["cmake", "-S", str(paths.src_dir() / pinned.VENDOR_DIR), "-B", str(bdir), *args]
    run_logged(cmd, paths.logs_dir() / f"configure-{cfg.variant}.log", stage)
    _write_json(stamp, {"args": args})
    return True


def compile_targets(cfg: BuildConfig, stage) -> bool:
    bdir = paths.build_dir(cfg.variant)
    targets = list(cfg.targets) + list(pinned.LIBS)
    if cfg.cuda:
        targets.append("ggml-cuda")
    cmd = ["ninja", "-C", str(bdir), f"-j{cfg.jobs}", *targets]
    log = paths.logs_dir() / f"compile-{cfg.variant}.log"
    run_logged(cmd, log, stage, ninja_progress=True)
    # upstream's UI-asset step runs every time (and is restat-pruned): not real work
    steps = re.findall(r"^\[\d+/\d+\] (.*)$", log.read_text(errors="replace"), re.M)
    return any("Provisioning UI assets" not in s for s in steps)


_BINDING_LIB = re.compile(r"^lib(llama|ggml(-[a-z0-9]+)?|mtmd)\.so(\.\d+)*$")


def lib_files(bin_dir: Path) -> list[Path]:
    """Shared libraries the bindings load, with their SONAME links (not the tools' own)."""
    return sorted(p for p in bin_dir.glob("lib*.so*") if _BINDING_LIB.match(p.name))


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        h.update(os.readlink(f).encode() if f.is_symlink() else f.read_bytes())
    return h.hexdigest()


def installed_bindings() -> Path | None:
    """Directory of the importable llama_cpp package, without importing it."""
    import importlib.util
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def install_bindings(cfg: BuildConfig, tq_version: str, stage) -> bool:
    src = paths.src_dir()
    bin_dir = paths.build_dir(cfg.variant) / "bin"
    libs = lib_files(bin_dir)
    py_files = sorted((src / "llama_cpp").rglob("*.py"))
    want = {"tq_version": tq_version, "variant": cfg.variant,
            "python": _digest(py_files), "libs": _digest(libs)}
    pkg = installed_bindings()
    if pkg is not None and _read_json(pkg / "lib" / BINDINGS_STAMP) == want:
        return False
    old = _read_json(pkg / "lib" / BINDINGS_STAMP) if pkg else {}
    if pkg is None or old.get("python") != want["python"]:
        env = dict(os.environ)
        # The Python package only: the libraries come from our build below.
        env["CMAKE_ARGS"] = "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"
        cmd = [sys.executable, "-m", "pip", "install", "--force-reinstall", "--no-deps", "--no-cache-dir",
               str(src)]
        if os.environ.get("TQ_GGUF_OFFLINE"):  # no index: use the installed scikit-build-core
            cmd[4:4] = ["--no-build-isolation", "--no-index"]
        stage.log("pip install patched llama-cpp-python (Python layer)")
        run_logged(cmd, paths.logs_dir() / f"bindings-{cfg.variant}.log", stage, env=env)
        importlib_invalidate()
        pkg = installed_bindings()
        if pkg is None:
            raise StageError("llama_cpp is not importable after pip install; see "
                             f"{paths.logs_dir() / f'bindings-{cfg.variant}.log'}")
    lib_dir = pkg / "lib"
    if lib_dir.exists():
        shutil.rmtree(lib_dir)
    lib_dir.mkdir(parents=True)
    for f in libs:
        shutil.copy2(f, lib_dir / f.name, follow_symlinks=False)
    _write_json(lib_dir / BINDINGS_STAMP, want)
    stage.log(f"{len(libs)} libraries -> {lib_dir}")
    return True


def importlib_invalidate() -> None:
    import importlib
    importlib.invalidate_caches()


def run(cfg: BuildConfig) -> dict:
    stages = Stages(5 if cfg.bindings else 4)

    patches, cuda, shash = series_info()
    version = tq_version_string(shash)
    if cfg.src_pack is None:
        st = stages.start("sdist: fetch and verify the pinned llama-cpp-python")
        sdist = fetch.get_sdist(paths.sdist_dir(), cfg.sdist, log=st.log)
        st.done(f"{sdist} (sha256 ok)")
        st = stages.start("patch: apply the series")
        changed = prepare_source(sdist, patches, cuda, shash, st)
    else:
        st = stages.start(f"sdist: skipped, using the source pack {cfg.src_pack}")
        st.done()
        st = stages.start("patch: unpack the patched source")
        changed = unpack_source(cfg.src_pack, shash, st)
    st.done(f"series {version}" + ("" if changed else " already applied, nothing to do"))

    st = stages.start(f"configure: cmake ({cfg.variant})")
    changed = configure(cfg, version, st)
    st.done("configured" if changed else "flags unchanged, nothing to do")

    st = stages.start(f"compile: {' '.join(cfg.targets)} (-j{cfg.jobs})")
    changed = compile_targets(cfg, st)
    st.done("built" if changed else "up to date, nothing to do")

    if cfg.bindings:
        st = stages.start("bindings: patched llama-cpp-python")
        changed = install_bindings(cfg, version, st)
        st.done("installed" if changed else "up to date, nothing to do")

    info = {"variant": cfg.variant, "tq_version": version,
            "bin": str(paths.build_dir(cfg.variant) / "bin"),
            "tools": list(cfg.targets), "bindings": cfg.bindings,
            "python": sys.executable,
            "purelib": sysconfig.get_paths()["purelib"]}
    _write_json(paths.active_file(), info)
    print(f"tq-gguf build: {cfg.variant} ready in {stages.elapsed()}; tools in {info['bin']}",
          file=sys.stderr)
    return info
