"""The GPU speed tooling, exercised on the CPU build: synthetic models and scripts/gpu_speed.py.

The CUDA kernels themselves are checked on a GPU machine by test-backend-ops
(docs/results/cuda.md); what a CPU-only CI can check is that the synthetic model is
what it claims to be and that the speed script measures, relates and writes its table.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tq_gguf import synthmodel

ROOT = Path(__file__).resolve().parent.parent


def test_named_shapes_and_unknown_shape():
    s = synthmodel.shape("llama-8b")
    assert (s.n_layer, s.n_head, s.n_head_kv, s.head_dim, s.n_ff, s.n_vocab) == (32, 32, 8, 128, 14336, 128256)
    assert 7.9e9 < s.n_params() < 8.1e9
    assert s.kv_bytes_per_token_f16() == 32 * 2 * 8 * 128 * 2
    with pytest.raises(ValueError, match="known: llama-8b"):
        synthmodel.shape("llama-9000b")


def test_synthetic_model_layout(tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader
    shp = synthmodel.shape("tiny")
    p = synthmodel.write_synthetic_llama(tmp_path / "m.gguf", shp)
    r = GGUFReader(str(p))
    t = {x.name: x for x in r.tensors}
    assert len(t) == 3 + 9 * shp.n_layer
    q = t["blk.0.attn_q.weight"]
    assert q.tensor_type == GGMLQuantizationType.Q4_0
    assert list(q.shape) == [shp.n_embd, shp.n_head * shp.head_dim]
    assert list(t["blk.1.attn_k.weight"].shape) == [shp.n_embd, shp.n_head_kv * shp.head_dim]
    assert list(t["token_embd.weight"].shape) == [shp.n_embd, shp.n_vocab]
    assert t["output_norm.weight"].tensor_type == GGMLQuantizationType.F32
    # every Q4_0 block carries the same small fp16 scale (std ~ 1/sqrt(n_embd))
    raw = np.asarray(q.data).reshape(-1, 18)
    d = raw[:, :2].copy().view(np.float16)
    assert np.all(d == d[0, 0]) and 0 < float(d[0, 0]) < 0.05
    assert int(r.fields["llama.block_count"].parts[-1][0]) == shp.n_layer


def _speed(tmp_path, *extra):
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_speed.py"), "--no-build", "--allow-cpu", "--shape", "tiny",
           "--model", str(tmp_path / "tiny-synth.gguf"), "--depths", "0,64", "--prompt", "16", "--gen", "4",
           "--reps", "1", "-o", str(tmp_path / "out" / "gpu-speed"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_speed_script_table_on_cpu(built, tmp_path):
    r = _speed(tmp_path, "--caches", "f16,q8_0,turbo3,q8_0/turbo3")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = json.loads((tmp_path / "out" / "gpu-speed-cpu.json").read_text())
    assert out["schema"] == 1 and out["shape"]["name"] == "tiny"
    rows = out["rows"]
    assert {(x["cache"], x["test"], x["depth"]) for x in rows} == {
        (c, t, d) for c in ("f16/f16", "q8_0/q8_0", "turbo3/turbo3", "q8_0/turbo3")
        for t in ("pp16", "tg4") for d in (0, 64)}
    for x in rows:
        assert x["ts"] > 0
        if x["cache"] == "f16/f16":
            assert x["vs_f16"] == pytest.approx(1.0)
        if x["cache"] == "q8_0/q8_0":
            assert x["vs_q8_0"] == pytest.approx(1.0)
        assert x["vs_f16"] == pytest.approx(x["ts"] / next(
            y["ts"] for y in rows if y["cache"] == "f16/f16" and y["test"] == x["test"] and y["depth"] == x["depth"]))
    md = (tmp_path / "out" / "gpu-speed-cpu.md").read_text()
    assert "| cache K/V | bits | test | depth | tok/s | vs f16 | vs q8_0 |" in md and "turbo3/turbo3 | 3.25" in md


def test_speed_script_sink_rows_on_cpu(built, tmp_path):
    r = _speed(tmp_path, "--caches", "f16,turbo3", "--sinks")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads((tmp_path / "out" / "gpu-speed-cpu.json").read_text())["rows"]
    assert {x["cache"] for x in rows if "ts" in x} == {"f16/f16", "turbo3/turbo3", "turbo3/turbo3-nosink"}
    ratios = [x for x in rows if "sink_on_over_off" in x]
    assert {(x["test"], x["depth"]) for x in ratios} == {(t, d) for t in ("pp16", "tg4") for d in (0, 64)}
    for x in ratios:
        on = next(y["ts"] for y in rows if y["cache"] == "turbo3/turbo3" and (y["test"], y["depth"]) == (x["test"], x["depth"]))
        off = next(y["ts"] for y in rows if y["cache"] == "turbo3/turbo3-nosink" and (y["test"], y["depth"]) == (x["test"], x["depth"]))
        assert x["sink_on_over_off"] == pytest.approx(on / off)
    md = (tmp_path / "out" / "gpu-speed-cpu.md").read_text()
    assert "Sink store cost" in md and "LLAMA_TURBO_SINKS=0" in md and "--sinks" in md


def test_speed_script_vector_rows_on_cpu(built, tmp_path):
    # on a CPU build TQ_FA_TURBO_MMA changes nothing; what is checked is which caches get the
    # A/B rows (turbo K and V only) and that the ratio table is computed from them
    r = _speed(tmp_path, "--caches", "f16,turbo3,q8_0/turbo3", "--vector", "--depths", "64")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads((tmp_path / "out" / "gpu-speed-cpu.json").read_text())["rows"]
    assert {x["cache"] for x in rows if "ts" in x} == {"f16/f16", "turbo3/turbo3", "q8_0/turbo3", "turbo3/turbo3-vec"}
    ratios = [x for x in rows if "mma_over_vector" in x]
    assert {(x["cache"], x["test"]) for x in ratios} == {("turbo3/turbo3", t) for t in ("pp16", "tg4")}
    for x in ratios:
        mma = next(y["ts"] for y in rows if y["cache"] == "turbo3/turbo3" and y["test"] == x["test"])
        vec = next(y["ts"] for y in rows if y["cache"] == "turbo3/turbo3-vec" and y["test"] == x["test"])
        assert x["mma_over_vector"] == pytest.approx(mma / vec)
    md = (tmp_path / "out" / "gpu-speed-cpu.md").read_text()
    assert "TQ_FA_TURBO_MMA=0" in md and "--vector" in md and "| tensor-core / vector |" in md
    r = _speed(tmp_path, "--caches", "turbo3", "--vector", "--sinks")
    assert r.returncode == 2 and "one per run" in r.stderr


def test_speed_script_unfused_rows_on_cpu(built, tmp_path):
    # on a CPU build TQ_CUDA_FUSE changes nothing; checked: every cache with a turbo side gets
    # the A/B rows, and the ratio table comes from them
    r = _speed(tmp_path, "--caches", "f16,q8_0/turbo3", "--unfused", "--depths", "64")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads((tmp_path / "out" / "gpu-speed-cpu.json").read_text())["rows"]
    assert {x["cache"] for x in rows if "ts" in x} == {"f16/f16", "q8_0/turbo3", "q8_0/turbo3-unfused"}
    ratios = [x for x in rows if "fused_over_unfused" in x]
    assert {(x["cache"], x["test"]) for x in ratios} == {("q8_0/turbo3", t) for t in ("pp16", "tg4")}
    for x in ratios:
        on = next(y["ts"] for y in rows if y["cache"] == "q8_0/turbo3" and y["test"] == x["test"])
        off = next(y["ts"] for y in rows if y["cache"] == "q8_0/turbo3-unfused" and y["test"] == x["test"])
        assert x["fused_over_unfused"] == pytest.approx(on / off)
    md = (tmp_path / "out" / "gpu-speed-cpu.md").read_text()
    assert "TQ_CUDA_FUSE=0" in md and "--unfused" in md and "| fused / unfused |" in md


def test_speed_script_rejects_unknown_cache_and_shape(tmp_path):
    r = _speed(tmp_path, "--caches", "f16,turbo9")
    assert r.returncode == 2 and "unknown cache type 'turbo9'" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_speed.py"), "--no-build", "--shape", "llama-9000b"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown model shape 'llama-9000b'" in r.stderr


def test_speed_script_build_settings():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_speed
    finally:
        sys.path.pop(0)
    assert gpu_speed.detect_cuda_arch("9.0\n9.0\n") == "90"
    assert gpu_speed.detect_cuda_arch("8.6") == "86"
    assert gpu_speed.detect_cuda_arch("") == "90" and gpu_speed.detect_cuda_arch("[N/A]") == "90"
    fa = gpu_speed.fa_quants([["turbo3", "q8_0"], ["f16", "f16"], ["turbo3", "turbo3"]]).split(";")
    assert "turbo3-q8_0" in fa and fa.count("f16-f16") == 1 and fa.count("turbo3-turbo3") == 1
    # the script's default list is the series' default (patches/0006 sets it in ggml/CMakeLists.txt)
    patch = (ROOT / "patches" / "0006-turbo-cuda.patch").read_text()
    assert '+set   (GGML_CUDA_FA_QUANTS "' + ";".join(gpu_speed.DEFAULT_FA) + '"' in patch


NCU_SNIPPET = """\
  void tq_rot_set_rows<128, 8>(const float *, const float *, float, const void *, int, char *, long, int, long) (2, 1, 1)x(32, 4, 1), Device 0, CC 9.0, Invocations 56
    Section: Command line profiler metrics
    ---------------------- ----------- ------- ------- -------
    Metric Name            Metric Unit Minimum Maximum Average
    ---------------------- ----------- ------- ------- -------
    gpu__time_duration.sum          us    4.80    5.25    5.00
    ---------------------- ----------- ------- ------- -------

  void flash_attn_combine_results<128>(const float *, const float2 *, float *, int) (1, 32, 1)x(128, 1, 1), Device 0, CC 9.0, Invocations 4
    gpu__time_duration.sum     nsecond  3100.00  3300.00  3250.00
"""


def test_ncu_summary_totals(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import ncu_summary
    rows = ncu_summary.parse(NCU_SNIPPET.splitlines())
    assert rows == [("tq_rot_set_rows", "2,1,1", 56, 5.0), ("flash_attn_combine_results", "1,32,1", 4, 3.25)]
    f = tmp_path / "ncu.txt"
    f.write_text(NCU_SNIPPET)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "ncu_summary.py"), str(f)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("tq_rot_set_rows")
    assert "TOTAL 293.0 us over 60 launches" in r.stdout
    f.write_text("no summary here\n")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "ncu_summary.py"), str(f)], capture_output=True, text=True)
    assert r.returncode == 1 and "no per-kernel" in r.stderr
