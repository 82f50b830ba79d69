"""turbo2/turbo3 in the patched llama.cpp (CPU) against the Python reference."""

import re
import subprocess
import sys

import numpy as np
import pytest

from tq_gguf import ggmlc, rotation, tools, turbo
from tq_gguf.perplexity import kl_divergence, kv_cache_size, perplexity, save_kld_base
from tq_gguf.tinymodel import TinyShape, write_tiny_llama

TYPES = ("turbo3", "turbo2")


def blocks(seed=0):
    """Random, rotated and adversarial 64-value blocks, as rows of 256."""
    rng = np.random.default_rng(seed)
    rows = [rng.standard_normal(256), rotation.rotate(rng.standard_normal(256) * np.r_[np.ones(255), 40.0]),
            rng.standard_normal(256) * 1e-3, rng.standard_normal(256) * 3e4]
    adv = np.zeros((8, 64))
    adv[1, 5] = 7.0                       # single spike
    adv[2] = 1e30 * rng.standard_normal(64)  # huge norm: scale clamps to 65504
    adv[3] = 1e-42 * rng.standard_normal(64)  # float32 denormals
    adv[4] = np.linspace(-3, 3, 64)        # values near every threshold
    adv[5, ::2] = 1.0                      # half zeros
    adv[6] = -adv[1]
    adv[7] = rng.standard_normal(64) * 65504
    rows += list(adv.reshape(2, 256))
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("t", TYPES)
def test_type_traits(built, t):
    tr = ggmlc.traits(t)
    info = turbo.type_info(t)
    assert tr.type_name.decode() == t and tr.is_quantized
    assert (tr.blck_size, tr.type_size) == (info.block_size, info.type_size)
    assert tr.type_size * 8 / tr.blck_size == {"turbo3": 3.25, "turbo2": 2.25}[t]


@pytest.mark.parametrize("t", TYPES)
def test_c_quantize_is_byte_exact(built, t):
    x = blocks()
    c = ggmlc.quantize(x, t)
    py = turbo.quantize_rows(x, t)
    assert c.shape == py.shape
    bad = np.nonzero((c != py).any(axis=1))[0]
    assert bad.size == 0, f"rows {bad} differ"


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("simd", [False, True])
def test_c_dequantize_is_exact(built, t, simd):
    x = blocks(1)
    data = turbo.quantize_rows(x, t)
    c = ggmlc.dequantize(data, t, x.shape[1], simd=simd)
    py = turbo.dequantize_rows(data, t, x.shape[1])
    np.testing.assert_array_equal(c, py)


@pytest.mark.parametrize("t", TYPES)
def test_c_vec_dot_matches_reference(built, t):
    rng = np.random.default_rng(2)
    for n in (64, 128, 256):
        x = rotation.rotate(rng.standard_normal((4, n))).astype(np.float32)
        q = rng.standard_normal(n).astype(np.float32)
        data = turbo.quantize_rows(x, t)
        ref = turbo.dequantize_rows(data, t, n).astype(np.float64) @ q.astype(np.float64)
        got = np.array([ggmlc.vec_dot(data[i], q, t) for i in range(4)])
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(q).sum())


# --- end to end on tiny generated models ------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-heads")
    return {hd: write_tiny_llama(d / f"tiny-h{hd}.gguf", TinyShape(head_dim=hd, n_head=4, n_head_kv=2), seed=hd)
            for hd in (64, 128, 256)}


@pytest.mark.parametrize("hd", [64, 128, 256])
@pytest.mark.parametrize("ctk,ctv", [("turbo3", "turbo3"), ("q8_0", "turbo3"), ("turbo2", "turbo2"), ("turbo3", "f16")])
def test_perplexity_runs_and_kv_size_matches_contract(built, tiny_models, tiny_text, hd, ctk, ctv):
    r = perplexity(tiny_models[hd], tiny_text, ctx=128, chunks=2, ctk=ctk, ctv=ctv, flash_attn="on", threads=2)
    assert r.finite, r.log[-2000:]
    kv = kv_cache_size(r.log)
    assert kv, r.log[-3000:]
    n_embd_kv = 2 * hd  # n_head_kv * head_dim
    bpv = {"turbo3": 3.25, "turbo2": 2.25, "q8_0": 8.5, "f16": 16}
    for name, mib, want in ((kv.k_type, kv.k_mib, ctk), (kv.v_type, kv.v_mib, ctv)):
        assert name == want
        expect = kv.cells * kv.layers * n_embd_kv * bpv[want] / 8 / 2**20
        assert abs(mib - expect) < 0.01, (name, mib, expect)


def test_turbo3_closer_to_f16_than_turbo2(built, tiny_models, tiny_text, tmp_path):
    """KL divergence vs an f16 cache (llama-perplexity --kl-divergence): ordered as the bits."""
    model, base = tiny_models[64], tmp_path / "base.kld"
    save_kld_base(model, tiny_text, base, ctx=128, chunks=4, threads=2)
    kld = {t: kl_divergence(model, base, 128, 4, t, t, threads=2).kld for t in ("f16", "q8_0", "turbo3", "turbo2")}
    assert abs(kld["f16"]) < 1e-4
    assert kld["q8_0"] < kld["turbo3"] < kld["turbo2"], kld


@pytest.mark.parametrize("fa", ["on", "off"])
def test_head_size_not_served_is_a_clear_error(built, tmp_path, tiny_text, fa):
    model = write_tiny_llama(tmp_path / "h96.gguf", TinyShape(head_dim=96))
    r = tools.run_tool("llama-perplexity", "-m", model, "-f", tiny_text, "-c", "128", "--chunks", "1",
                       "-ctk", "turbo3", "-ctv", "f16", "-fa", fa, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "failed to create context" in out
    # upstream's block-size check (flash attention on) or ours (any path) names type and size
    assert re.search(r"turbo3 (with block size 64 does not divide n_embd_head_k=96|needs attention heads.*has 96)",
                     out), out[-2000:]


def test_turbo_v_without_flash_attention_is_refused(built, tiny_model, tiny_text):
    r = tools.run_tool("llama-perplexity", "-m", tiny_model, "-f", tiny_text, "-c", "128", "--chunks", "1",
                       "-ctk", "f16", "-ctv", "turbo3", "-fa", "off", timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "requires flash_attn" in out, out[-2000:]


def test_unknown_cache_type_lists_the_turbo_types(built, tiny_model):
    r = tools.run_tool("llama-perplexity", "-m", tiny_model, "-ctk", "turbo5", timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "turbo5" in out
    help_ = tools.run_tool("llama-perplexity", "--help", timeout=60)
    assert "turbo3, turbo2" in help_.stdout + help_.stderr


def test_llama_bench_accepts_turbo(built, tiny_model):
    import json
    r = tools.run_tool("llama-bench", "-m", tiny_model, "-p", "0", "-n", "4", "-r", "1", "-t", "2", "-fa", "1",
                       "-ctk", "turbo3", "-ctv", "turbo3", "-o", "json", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(r.stdout)[0]
    assert (row["type_k"], row["type_v"]) == ("turbo3", "turbo3") and row["avg_ts"] > 0


def test_bindings_export_type_constants(built):
    code = "import llama_cpp as l; print(l.GGML_TYPE_TURBO2, l.GGML_TYPE_TURBO3)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["128", "129"], r.stderr


# --- the ggml ops the cache uses, on the CPU backend, against the reference ------

@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("src", ["f32", "f16"])
def test_set_rows_writes_reference_bytes(built, t, src):
    n, rows = 128, 6
    xs = blocks(3)[:3, :n].astype(np.float16 if src == "f16" else np.float32)
    g = ggmlc.OpGraph()
    cache = g.tensor(t, n, rows, np.zeros((rows, turbo.bytes_per_row(t, n)), np.uint8))
    upd = g.tensor(src, n, 3, xs)
    idx = g.tensor("i64", 3, data=np.array([4, 0, 2], dtype=np.int64))
    got = g.read(g.compute(g.base.ggml_set_rows(g.ctx, cache, upd, idx))).reshape(rows, -1)
    np.testing.assert_array_equal(got[[4, 0, 2]], turbo.quantize_rows(xs.astype(np.float32), t))
    assert not got[[1, 3, 5]].any()  # untouched rows stay zero
    g.close()


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("dst", ["f32", "f16"])
def test_get_rows_and_cpy_read_reference_values(built, t, dst):
    n, rows = 128, 5
    x = blocks(4)[:rows, :n]
    data = turbo.quantize_rows(x, t)
    ref = turbo.dequantize_rows(data, t, n)
    g = ggmlc.OpGraph()
    src = g.tensor(t, n, rows, data)
    out = g.tensor(dst, n, rows)
    got = g.read(g.compute(g.base.ggml_cpy(g.ctx, src, out)), np.float16 if dst == "f16" else np.float32)
    want = ref.astype(np.float16) if dst == "f16" else ref
    np.testing.assert_array_equal(got.reshape(rows, n), want)
    if dst == "f32":
        idx = g.tensor("i32", 2, data=np.array([3, 1], dtype=np.int32))
        rows_out = g.compute(g.base.ggml_get_rows(g.ctx, src, idx))
        np.testing.assert_array_equal(g.read(rows_out, np.float32).reshape(2, n), ref[[3, 1]])
    g.close()


@pytest.mark.parametrize("t", TYPES)
def test_cpy_from_f32_quantizes_like_reference(built, t):
    n, rows = 256, 4
    x = blocks(5)[:rows, :n]
    g = ggmlc.OpGraph()
    src = g.tensor("f32", n, rows, x)
    dst = g.tensor(t, n, rows)
    got = g.read(g.compute(g.base.ggml_cpy(g.ctx, src, dst))).reshape(rows, -1)
    np.testing.assert_array_equal(got, turbo.quantize_rows(x, t))
    g.close()
