"""`tq-gguf doctor`: what is pinned, patched, built and installed, and what is missing."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys

from . import __version__, build, paths, pinned, tools
from .fetch import sha256_file

CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_tile", "amx_int8")


def cpu_features() -> list[str]:
    try:
        txt = open("/proc/cpuinfo").read()
    except OSError:
        return []
    flags = set()
    for line in txt.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in CPU_FLAGS if f in flags]


def _run(cmd: list[str], timeout=20) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    return [l.strip() for l in out.splitlines() if l.strip()]


def bindings_status() -> tuple[str, bool]:
    """Import llama_cpp in a child process (a broken library must not kill us)."""
    code = ("import llama_cpp, os; print(os.path.dirname(llama_cpp.__file__));"
            "print(llama_cpp.llama_tq_version().decode())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"not usable: {last}", False
    where, ver = r.stdout.strip().splitlines()[-2:]
    return f"{where} (tq {ver})", True


def report() -> int:
    missing: list[tuple[str, str]] = []
    print(f"tq-gguf {__version__}  python {platform.python_version()} ({sys.executable})")
    pin = pinned.LLAMA_CPP_PYTHON
    print(f"pinned:  {pin.dist} {pin.version} (llama.cpp {pin.llama_cpp_commit})")
    print(f"         sdist sha256 {pin.sha256}")
    print(f"home:    {paths.home()}")

    patches, cuda, h = build.series_info()
    version = build.tq_version_string(h)
    print(f"series:  {version}  ({len(patches)} patches, {len(cuda)} cuda files; sha256 {h})")
    for p in patches:
        print(f"         {p.name}  {p.subject()}")

    sdist = paths.sdist_dir() / pin.sdist_name
    if sdist.exists():
        ok = sha256_file(sdist) == pin.sha256
        print(f"sdist:   {sdist} ({'sha256 ok' if ok else 'SHA256 MISMATCH'})")
        if not ok:
            missing.append(("the cached sdist is corrupt", f"rm {sdist} && tq-gguf build"))
    else:
        print("sdist:   not fetched")
        missing.append(("pinned sdist", "tq-gguf build"))

    stamp = build._read_json(paths.src_dir() / build.SRC_STAMP)
    if not stamp:
        print("source:  not prepared")
    elif stamp.get("series") != h:
        print(f"source:  {paths.src_dir()} carries an older series")
        missing.append(("patched source is stale", "tq-gguf build"))
    else:
        print(f"source:  {paths.src_dir()} (series applied)")

    act = tools.active()
    variants = sorted(p.name for p in (paths.home() / "build").glob("*") if p.is_dir())
    print(f"builds:  {', '.join(variants) or 'none'}; active: {act.get('variant', 'none')}")
    bdir = tools.bin_dir()
    for t in pinned.TOOLS:
        p = bdir / t if bdir else None
        if p and p.exists():
            tv = tools.tool_version(t)
            mark = "ok" if tv == version else f"STALE (tq {tv or 'none'})"
            print(f"  {t:<18} {p}  {mark}")
            if tv != version:
                missing.append((f"{t} is from another series", "tq-gguf build"))
        else:
            print(f"  {t:<18} missing")
            missing.append((t, "tq-gguf build"))

    where, ok = bindings_status()
    print(f"bindings: llama_cpp {where}")
    if not ok or f"(tq {version})" not in where:
        missing.append(("patched llama-cpp-python bindings", "tq-gguf build"))

    from importlib.metadata import PackageNotFoundError, version as dist_version
    conv = []
    for dist in ("torch", "transformers", "safetensors", "sentencepiece"):
        try:
            conv.append(f"{dist} {dist_version(dist)}")
        except PackageNotFoundError:
            conv.append(f"{dist} missing")
    print(f"convert: {', '.join(conv)}")
    if any(c.endswith("missing") for c in conv):  # optional: `tq-gguf convert` only
        print("         (`tq-gguf convert` needs them: pip install -e '.[hf]')")

    print(f"cpu:     {platform.machine()} {' '.join(cpu_features()) or '(no x86 SIMD flags seen)'}")
    if "amx_tile" in cpu_features():
        print("         AMX present: keep GGML_NATIVE off (the default); --native may die with SIGILL")
    g = gpus()
    print(f"gpu:     {'; '.join(g) if g else 'none seen (nvidia-smi)'}")
    nvcc = _run(["nvcc", "--version"]).splitlines()[-1:] if shutil.which("nvcc") else []
    print(f"nvcc:    {nvcc[0] if nvcc else 'not found'}")
    if g and nvcc and not any(v.startswith("cuda") for v in variants):
        missing.append(("CUDA build", "tq-gguf build --cuda --cuda-arch 90"))
    for exe, fix in (("cmake", "apt-get install cmake"), ("ninja", "apt-get install ninja-build"),
                     ("git", "apt-get install git"), ("c++", "apt-get install g++")):
        if not shutil.which(exe):
            missing.append((exe, fix))

    if missing:
        print("\nmissing:")
        for what, fix in missing:
            print(f"  {what:<40} fix: {fix}")
        return 1
    print("\nall good")
    return 0


if __name__ == "__main__":
    sys.exit(report())
