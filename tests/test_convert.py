"""`tq-gguf convert`: tiny random Hugging Face checkpoints (built here with transformers,
saved as safetensors with a SentencePiece tokenizer trained here) through the pinned
converter, llama-quantize, calibration and llama-perplexity; every input error."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tq_gguf import convert
from tq_gguf.errors import UsageError
from tq_gguf.tinymodel import sample_text

import torch  # test requirements (.[test,hf]): a missing one fails, never skips
import transformers

pytestmark = pytest.mark.build

GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3"}


def tq(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tq_gguf", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> dict[str, Path]:
    from tq_gguf.hftiny import write_tiny_hf
    root = tmp_path_factory.mktemp("hf")
    return {a: write_tiny_hf(root / a, a) for a in GGUF_ARCH}


@pytest.fixture(scope="module")
def calib_text(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ctext") / "calib.txt"
    p.write_text(sample_text(60_000, seed=3))
    return p


@pytest.fixture(scope="module")
def f16_models(hf_models, built, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("f16")
    res = {}
    for a, d in hf_models.items():
        r = tq("convert", d, "-o", out / f"{a}.gguf", "--outtype", "f16")
        assert r.returncode == 0, r.stderr[-3000:]
        res[a] = out / f"{a}.gguf"
    return res


def _tokens(model_path: Path, n: int) -> list[int]:
    from tq_gguf import runtime
    m = runtime.Model(model_path)
    try:
        return m.tokenize(sample_text(4 * n, seed=11), add_bos=True)[:n]
    finally:
        m.close()


def _gguf_logits(model_path: Path, toks: list[int]) -> np.ndarray:
    from tq_gguf import runtime
    m = runtime.Model(model_path)
    try:
        s = runtime.Session(m, n_ctx=256, n_batch=256, type_k="f32", type_v="f32")
        try:
            return np.array(s.decode(toks, 0, all_logits=True), dtype=np.float64)
        finally:
            s.close()
    finally:
        m.close()


@pytest.mark.parametrize("arch", list(GGUF_ARCH))
def test_converted_f16_logits_match_transformers(arch, hf_models, f16_models):
    import gguf
    path = f16_models[arch]
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == GGUF_ARCH[arch]
    assert not any(k.startswith("turbo.") for k in r.fields), "no --calibrate: a plain GGUF"
    toks = _tokens(path, 200)
    got = _gguf_logits(path, toks)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_models[arch], dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([toks])).logits[0].double().numpy()[:, :got.shape[1]]
    assert got.shape == ref.shape
    from tq_gguf.runtime import kld as mean_kld
    rel = np.abs(got - ref).max() / ref.std()
    kld = mean_kld(ref, got)
    assert rel < 0.05, f"{arch}: max |logit diff| is {rel:.4f} of the logits' s.d."
    assert kld < 1e-3, f"{arch}: KLD(transformers || GGUF f16) {kld:.2e}"
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_pos_offset_exact_per_architecture(arch, hf_models, built, tmp_path):
    """The positional key offset (patch 0011) in each RoPE layout the runtime accepts: norm pairs
    (llama), neox pairs with a key bias (qwen2), neox with sliding-window layers on their own RoPE
    base (gemma3, head 256, one KV head). A random calibration with an offset on every layer, f32
    cache, softmax path: the logits equal the plain run's, in one batch and decoding one token at
    a time; with a lossy cache the offset changes the logits (it is applied)."""
    import gguf
    from tq_gguf import rotation, runtime
    from tq_gguf.calib.calibrate import model_info
    from tq_gguf.calib.schema import Calibration, LayerTransform, read, write_sidecar
    path = tmp_path / f"{arch}-f32.gguf"  # f32 weights: nothing rounds activations to f16
    r = tq("convert", hf_models[arch], "-o", path, "--outtype", "f32")
    assert r.returncode == 0, r.stderr[-3000:]
    info = model_info(path)
    f = gguf.GGUFReader(str(path)).fields
    h = int(f[f"{GGUF_ARCH[arch]}.attention.head_count_kv"].contents())
    d = info["d_k"]
    rng = np.random.default_rng(6)

    def mats():
        return np.array([rotation.rotation_matrix(d) @ np.diag(np.exp(0.3 * rng.standard_normal(d)))
                         @ np.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(h)])

    layers = [LayerTransform.build(mats(), rng.standard_normal((h, d)), mats(), rng.standard_normal((h, d)),
                                   k_pos=3.0 * rng.standard_normal((h, d))) for _ in range(info["n_layer"])]
    side = write_sidecar(tmp_path / "cal.gguf", Calibration(GGUF_ARCH[arch], info["n_layer"], layers))
    toks = _tokens(path, 96)

    def run(side, force, type_kv="f32", fa=False, steps=False):
        with runtime.environ({"LLAMA_TURBO_CALIB": str(side), "LLAMA_TURBO_CALIB_FORCE": "1" if force else "0"}):
            m = runtime.Model(path)
            s = runtime.Session(m, n_ctx=256, type_k=type_kv, type_v=type_kv, flash_attn=fa)
        try:
            if not steps:
                return np.array(s.decode(toks, 0, all_logits=True), dtype=np.float64)
            s.decode(toks[:48], 0)
            return np.array([s.decode([t], 48 + i) for i, t in enumerate(toks[48:])], dtype=np.float64)
        finally:
            s.close()
            m.close()

    plain = run(side, force=False)
    cal = read(side)
    for lt in cal.layers:
        lt.k_pos = None
    nopos = write_sidecar(tmp_path / "nopos.gguf", cal)
    # the same transforms without the offset set the float noise (gemma3's tiny model amplifies
    # rounding: 2e-4); a wrong correction moves the logits by far more than that
    base = np.abs(run(nopos, force=True) - plain).max() / np.abs(plain).max()
    assert base < 1e-3, base
    for steps in (False, True):
        got = run(side, force=True, steps=steps)
        ref = plain[48:] if steps else plain
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err < max(1e-4, 2 * base), f"{arch} steps={steps}: max |dlogit| / max |logit| = {err:.2e} ({base:.2e} without the offset)"
    with_pos = run(side, force=True, type_kv="turbo3", fa=True)
    without = run(nopos, force=True, type_kv="turbo3", fa=True)
    assert np.abs(with_pos - without).max() > 1e-3 * np.abs(plain).max()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_convert_calibrate_then_perplexity_turbo3(arch, hf_models, calib_text, built, tmp_path):
    from tq_gguf.calib.schema import read
    from tq_gguf.perplexity import perplexity
    out = tmp_path / f"{arch}.q8.tq.gguf"
    r = tq("convert", hf_models[arch], "-o", out, "--outtype", "q8_0", "--calibrate", "--calib-text", calib_text,
           "--calib-tokens", 2048, "--calib-ctx", 256, "--val-chunks", 2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "convert: wrote" in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == [out.name], "temporary files left beside OUT"
    cal = read(out)
    assert cal is not None and cal.arch == GGUF_ARCH[arch]
    assert cal.info["source"]["text"] == str(calib_text)
    # the runtime picks the calibration up with no flags; turbo3 gives finite numbers
    res = perplexity(out, calib_text, ctx=128, chunks=3, ctk="turbo3", ctv="turbo3", flash_attn="on")
    assert res.finite and 1.0 < res.ppl < 1e5, res.ppl
    assert "turbo calibration v1 from" in res.log
    # weights are q8_0 as asked
    import gguf
    types = {t.tensor_type for t in gguf.GGUFReader(str(out)).tensors if t.name.endswith("attn_q.weight")}
    assert types == {gguf.GGMLQuantizationType.Q8_0}


def test_convert_quantized_outtype(hf_models, calib_text, built, tmp_path):
    import gguf
    from tq_gguf.perplexity import perplexity
    out = tmp_path / "llama.q4_k_m.gguf"
    r = tq("convert", hf_models["llama"], "-o", out, "--outtype", "q4_k_m")
    assert r.returncode == 0, r.stderr[-3000:]
    types = {t.tensor_type for t in gguf.GGUFReader(str(out)).tensors if t.name.endswith("ffn_up.weight")}
    assert types == {gguf.GGMLQuantizationType.Q4_K}
    assert gguf.GGUFReader(str(out)).fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    res = perplexity(out, calib_text, ctx=128, chunks=2, ctk="turbo3", ctv="turbo3", flash_attn="on")
    assert res.finite


@pytest.mark.parametrize("arch", list(GGUF_ARCH))
def test_hf_capture_equals_gguf_capture(arch, hf_models, built, tmp_path):
    """Statistics taken in HF space and mapped to llama.cpp's channel order equal those the
    runtime captures from the converted (f32) GGUF, and so do the fitted transforms; the
    unmapped HF statistics do not (for the architectures whose channels are permuted)."""
    from tq_gguf import runtime
    from tq_gguf.calib import fit
    from tq_gguf.calib.capture import Capture
    from tq_gguf.calib.hfcapture import capture_hf
    path = tmp_path / "m.f32.gguf"
    r = tq("convert", hf_models[arch], "-o", path, "--outtype", "f32")
    assert r.returncode == 0, r.stderr[-3000:]
    a_info = convert.ARCHS[json.loads((hf_models[arch] / "config.json").read_text())["architectures"][0]]
    m = runtime.Model(path)
    try:
        stream = m.tokenize(sample_text(20_000, seed=5), add_bos=False)
        seqs = [[m.bos] + stream[i * 127:(i + 1) * 127] for i in range(3)]
        cap = Capture(m, n_ctx=128)
        try:
            ref = cap.run(seqs)
        finally:
            cap.close()
    finally:
        m.close()
    got = capture_hf(hf_models[arch], seqs, a_info.interleave, a_info.q_prescaled)
    assert sorted(got) == sorted(ref)

    def rel(x, y):
        return float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30))

    for il in ref:
        x, y = ref[il], got[il]
        assert (x.n_k, x.n_q) == (y.n_k, y.n_q)
        for name, p, q in (("K mean", x.k_mean(), y.k_mean()), ("K cov", x.k_cov(), y.k_cov()),
                           ("E[qq']", x.q_second(), y.q_second()), ("V cov", x.v_cov(), y.v_cov()),
                           ("sink K", np.array(x.sink_k), np.array(y.sink_k))):
            assert rel(p, q) < 3e-3, f"{arch} layer {il} {name}: {rel(p, q):.2e}"
    n_layer = len(ref)
    # without the sink reflection: its target takes the signs of the sink's rotated components,
    # so near-zero components may flip between two equally good fits
    for kind, vkind in (("whiten", "rotate"), ("scale", "mean")):
        fr = fit.fit(ref, n_layer, kind, vkind, sink=False, alpha=0.125)
        fg = fit.fit(got, n_layer, kind, vkind, sink=False, alpha=0.125)
        for il in range(n_layer):
            if fr[il] is None:
                assert fg[il] is None
                continue
            for f in ("k_fwd", "k_off", "v_fwd", "v_mean"):
                assert rel(getattr(fr[il], f), getattr(fg[il], f)) < 2e-2, f"{arch} layer {il} {kind} {f}"
    if a_info.interleave:  # the map matters: without it the statistics disagree
        raw = capture_hf(hf_models[arch], seqs, False, a_info.q_prescaled)
        assert rel(ref[0].k_cov(), raw[0].k_cov()) > 0.1


def test_convert_sharded_checkpoint(hf_models, built, tmp_path):
    d = tmp_path / "sharded"
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_models["qwen2"], dtype=torch.float32)
    model.save_pretrained(d, safe_serialization=True, max_shard_size="1MB")
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(hf_models["qwen2"] / f, d / f)
    shards = sorted(d.glob("model-*.safetensors"))
    assert len(shards) > 2 and (d / "model.safetensors.index.json").is_file()
    out = tmp_path / "sharded.gguf"
    r = tq("convert", d, "-o", out, "--outtype", "f16")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "in %d file(s)" % len(shards) in r.stderr
    # a missing shard: refused before any work, naming the shard
    shards[1].unlink()
    out2 = tmp_path / "missing.gguf"
    r = tq("convert", d, "-o", out2)
    assert r.returncode == 1 and "sharded checkpoint is incomplete" in r.stderr and shards[1].name in r.stderr
    assert not out2.exists()


# --- errors: each refused before work starts, with a message that says what is wrong ---

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _err(hf_dir, out, **kw) -> str:
    existed = Path(out).exists()
    with pytest.raises(UsageError) as e:
        convert.run(hf_dir, out, verbose=False, **kw)
    assert Path(out).exists() == existed
    return str(e.value)


def test_errors_missing_files(hf_models, tmp_path):
    out = tmp_path / "o.gguf"
    assert "not a folder" in _err(tmp_path / "nope", out)
    d = _copy(hf_models["llama"], tmp_path / "a")
    (d / "config.json").unlink()
    assert "config.json is missing" in _err(d, out)
    (d / "config.json").write_text("{not json")
    assert "not valid JSON" in _err(d, out)
    d = _copy(hf_models["llama"], tmp_path / "b")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    msg = _err(d, out)
    assert "no model.safetensors" in msg and "safe_serialization=True" in msg
    d = _copy(hf_models["llama"], tmp_path / "c")
    (d / "tokenizer.model").unlink()
    assert "no tokenizer" in _err(d, out)


def test_errors_unsupported_architecture(hf_models, tmp_path):
    d = _copy(hf_models["llama"], tmp_path / "a")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    msg = _err(d, tmp_path / "o.gguf")
    assert "'GPT2LMHeadModel' is not supported" in msg
    assert all(a in msg for a in convert.ARCHS), msg


def test_errors_corrupt_safetensors(hf_models, tmp_path):
    d = _copy(hf_models["llama"], tmp_path / "a")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    assert "truncated" in _err(d, tmp_path / "o.gguf")
    f.write_bytes(b"\xff" * 16)
    assert "not a readable safetensors file" in _err(d, tmp_path / "o.gguf")


def test_errors_sharded_index_mismatch(hf_models, tmp_path):
    d = _copy(hf_models["llama"], tmp_path / "a")
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "model.safetensors", "lm_head.weight": "model-2.safetensors"}}))
    assert "1 of 2 shards missing (model-2.safetensors)" in _err(d, tmp_path / "o.gguf")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"nope": "model.safetensors"}}))
    assert "not in the shard the index names" in _err(d, tmp_path / "o.gguf")


def test_errors_disk_space_and_arguments(hf_models, tmp_path, monkeypatch):
    d = hf_models["llama"]
    assert "--outtype 'q3'" in _err(d, tmp_path / "o.gguf", outtype="q3")
    assert "output folder does not exist" in _err(d, tmp_path / "no" / "o.gguf")
    (tmp_path / "dir.gguf").mkdir()
    assert "is a folder" in _err(d, tmp_path / "dir.gguf")
    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(convert.shutil, "disk_usage", lambda p: free._replace(free=1 << 20))
    msg = _err(d, tmp_path / "o.gguf", outtype="q4_k_m", calibrate=True)
    assert "GiB free, converting needs about" in msg and "16-bit intermediate" in msg


def test_failed_conversion_keeps_existing_output(hf_models, built, tmp_path):
    """A converter failure (a tensor it cannot map) leaves an existing OUT as it was and no
    temporary files; the error carries the converter's last lines."""
    from safetensors.torch import load_file, save_file
    d = _copy(hf_models["llama"], tmp_path / "a")
    tensors = load_file(d / "model.safetensors")
    tensors["model.layers.0.self_attn.mystery.weight"] = torch.zeros(4, 4)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    out.write_bytes(b"previous file")
    r = tq("convert", d, "-o", out)
    assert r.returncode == 1
    assert "convert_hf_to_gguf.py failed" in r.stderr and "mystery" in r.stderr
    assert out.read_bytes() == b"previous file"
    assert [p.name for p in out.parent.iterdir()] == ["o.gguf"]


def test_cli_calibration_flags_need_calibrate(hf_models, tmp_path):
    r = tq("convert", hf_models["llama"], "-o", tmp_path / "o.gguf", "--capture", "hf")
    assert r.returncode == 1 and "need --calibrate" in r.stderr


def test_convert_calibrate_with_hf_capture(hf_models, calib_text, built, tmp_path):
    """--capture hf: the statistics come from transformers; the file says so and is valid."""
    from tq_gguf.calib.schema import read
    out = tmp_path / "o.gguf"
    r = tq("convert", hf_models["llama"], "-o", out, "--calibrate", "--capture", "hf", "--calib-text", calib_text,
           "--calib-tokens", 1024, "--calib-ctx", 256, "--val-chunks", 2, "--types", "turbo3")
    assert r.returncode == 0, r.stderr[-3000:]
    cal = read(out)
    assert cal.info["capture"] == "transformers"
    assert "statistics from transformers" in tq("inspect", out).stdout
    kld = cal.validation["kld"]
    assert math.isfinite(kld[cal.validation["chosen"]]["turbo3"])
    assert kld[cal.validation["chosen"]]["turbo3"] < kld["default"]["turbo3"]


def test_error_when_the_pinned_tree_is_not_prepared(hf_models, tmp_path, monkeypatch):
    monkeypatch.setattr(convert.paths, "src_dir", lambda: tmp_path / "nothing")
    msg = _err(hf_models["llama"], tmp_path / "o.gguf")
    assert "convert_hf_to_gguf.py is missing" in msg and "tq-gguf build" in msg


def test_error_when_the_converter_requirements_are_missing(hf_models, tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "missing_requirements", lambda: ["torch", "sentencepiece"])
    msg = _err(hf_models["llama"], tmp_path / "o.gguf")
    assert "needs torch, sentencepiece" in msg and ".[hf]" in msg
