"""After `tq-gguf build`: the tools, the bindings and a perplexity run."""

import json
import math
import os
import subprocess
import sys

import pytest

from tq_gguf import pinned, tools
from tq_gguf.perplexity import perplexity


@pytest.mark.parametrize("tool", pinned.TOOLS)
def test_tool_version_shows_series(built, series_version, tool):
    r = tools.run_tool(tool, "--version", timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert f"tq-gguf: {series_version}" in out, out
    assert pinned.LLAMA_CPP_PYTHON.llama_cpp_commit in out


def test_llama_bench_build_column(built, series_version, tiny_model):
    r = tools.run_tool("llama-bench", "-m", tiny_model, "-p", "16", "-n", "4", "-r", "1",
                       "-t", "2", "-o", "json", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert rows and all(row["build_commit"].endswith("+tq" + series_version) for row in rows)
    assert all(row["avg_ts"] > 0 for row in rows)


BINDINGS_PROBE = r"""
import json, llama_cpp, numpy as np
ver = llama_cpp.llama_tq_version().decode()
maps = open("/proc/self/maps").read()
libs = sorted({l.split()[-1] for l in maps.splitlines() if "libllama" in l})
m = llama_cpp.Llama(model_path=MODEL, n_ctx=128, n_threads=2, logits_all=True, verbose=False)
toks = m.tokenize(b"keys and values")
m.eval(toks)
logits = np.asarray(m.scores[: m.n_tokens])
print(json.dumps({"ver": ver, "libs": libs, "pkg": llama_cpp.__file__,
                  "n": len(toks), "finite": bool(np.isfinite(logits).all()),
                  "std": float(logits.std())}))
"""


def test_bindings_load_patched_library(built, series_version, tiny_model):
    code = BINDINGS_PROBE.replace("MODEL", repr(str(tiny_model)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["ver"] == series_version
    pkg_dir = os.path.dirname(res["pkg"])
    assert res["libs"] and all(l.startswith(pkg_dir) for l in res["libs"]), res
    assert res["n"] > 3 and res["finite"] and res["std"] > 0


def test_perplexity_on_tiny_model_is_finite(built, tiny_model, tiny_text):
    r = perplexity(tiny_model, tiny_text, ctx=128, chunks=4, threads=2)
    assert r.finite, r.log[-2000:]
    # random weights over a 259-token vocabulary: clearly worse than chance-free text,
    # but a sane number, not 0/1 (which would mean nothing was scored)
    assert 2.0 < r.ppl < 1e6
    assert r.kv_mib is not None and r.kv_mib > 0


def test_rebuild_with_nothing_changed_does_nothing(built):
    r = subprocess.run([sys.executable, "-m", "tq_gguf", "build"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr
    assert err.count("nothing to do") == 4, err


def test_doctor_reports_complete_build(built, series_version):
    r = subprocess.run([sys.executable, "-m", "tq_gguf", "doctor"], capture_output=True, text=True,
                       timeout=300)
    assert series_version in r.stdout
    for t in pinned.TOOLS:
        assert f"{t}" in r.stdout
    assert "all good" in r.stdout, r.stdout
    assert r.returncode == 0


def test_flags_select_build_variant():
    from tq_gguf.build import BuildConfig
    cpu, cuda, nat = BuildConfig(), BuildConfig(cuda=True, cuda_arch="86;90"), BuildConfig(native=True)
    assert (cpu.variant, cuda.variant, nat.variant) == ("cpu", "cuda-sm86-90", "cpu-native")
    assert "-DGGML_NATIVE=OFF" in cpu.cmake_args("v") and "-DGGML_AVX2=ON" in cpu.cmake_args("v")
    native_flag = "-DGGML_NATIVE=" + "ON"
    assert native_flag in nat.cmake_args("v") and native_flag not in cpu.cmake_args("v")
    assert "-DGGML_CUDA=ON" in cuda.cmake_args("v") and "-DCMAKE_CUDA_ARCHITECTURES=86;90" in cuda.cmake_args("v")
    assert cpu.cmake_args("a") != cpu.cmake_args("b")  # a new series reconfigures


def test_fa_quants_reach_cmake_only_for_cuda():
    from tq_gguf.build import BuildConfig
    pairs = "turbo3-turbo3;q8_0-turbo3"
    cuda = BuildConfig(cuda=True, fa_quants=pairs)
    assert f"-DGGML_CUDA_FA_QUANTS={pairs}" in cuda.cmake_args("v")
    assert not any("FA_QUANTS" in a for a in BuildConfig(fa_quants=pairs).cmake_args("v"))
    assert not any("FA_QUANTS" in a for a in BuildConfig(cuda=True).cmake_args("v"))  # series default
