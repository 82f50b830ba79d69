"""Calibration in the GGUF: metadata round trip, load-time validation, the transform
algebra through the real runtime, the per-layer policy, and calibrate end to end."""

import subprocess
import sys

import numpy as np
import pytest

from tq_gguf import rotation, runtime
from tq_gguf.calib import fit as fitmod
from tq_gguf.calib.schema import (Calibration, CalibError, LayerTransform, copy_model, read, write_model,
                                  write_sidecar)
from tq_gguf.tinymodel import TinyShape, write_tiny_llama

SHAPE = TinyShape()  # 2 layers, 4 Q heads on 2 KV heads (GQA 2), head 64


def random_transform(rng, h=SHAPE.n_head_kv, d=SHAPE.head_dim, offsets=True) -> LayerTransform:
    """Well-conditioned, different for every head (a wrong GQA head mapping shows)."""
    def mats():
        out = []
        for _ in range(h):
            q, _ = np.linalg.qr(rng.standard_normal((d, d)))
            out.append(rotation.rotation_matrix(d) @ np.diag(np.exp(0.4 * rng.standard_normal(d))) @ q)
        return np.array(out)
    off = (lambda: rng.standard_normal((h, d))) if offsets else (lambda: np.zeros((h, d)))
    return LayerTransform.build(mats(), off(), mats(), off())


def calibration(rng, n_layer=SHAPE.n_layer, pos=False, **kw) -> Calibration:
    layers = [random_transform(rng) for _ in range(n_layer)]
    if pos:  # a positional key offset of the size real keys carry
        for lt in layers:
            lt.k_pos = 3.0 * rng.standard_normal(lt.k_off.shape)
    return Calibration("llama", n_layer, layers, **kw)


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    """f32 weights: the matmuls do not round activations, so transforms can be checked to float tolerance."""
    return write_tiny_llama(tmp_path_factory.mktemp("f32") / "tiny-f32.gguf", SHAPE, dtype=np.float32)


def _tokens(model, tiny_text):
    t = model.tokenize(tiny_text.read_text()[:300])
    assert len(t) >= 150
    return t[:150]


def load(path, sidecar=None):
    with runtime.environ({"LLAMA_TURBO_CALIB": str(sidecar) if sidecar else ""}):
        return runtime.Model(path)


def logits(model, toks, type_k="f32", type_v="f32", fa=False, force=True, env=None):
    e = {"LLAMA_TURBO_CALIB_FORCE": "1" if force else "0", **(env or {})}
    with runtime.environ(e):
        s = runtime.Session(model, n_ctx=256, type_k=type_k, type_v=type_v, flash_attn=fa)
    try:
        return s.decode(toks, 0, all_logits=True)
    finally:
        s.close()


# --- metadata ------------------------------------------------------------------------

def test_metadata_round_trip(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    cal = calibration(rng, pos=True, policy={"turbo3": {"k": ["q8_0", "turbo3"], "v": ["turbo3", "f16"]}},
                      budget_bpv=3.5, info={"k_transform": "scale"}, validation={"kld": {"default": {"turbo3": 0.2}}})
    cal.sink_cells = 2
    side = write_sidecar(tmp_path / "side.gguf", cal)
    out = write_model(tiny_model, tmp_path / "cal.gguf", cal)
    for path in (side, out):
        got = read(path)
        assert got.arch == "llama" and got.n_layer == 2 and got.budget_bpv == pytest.approx(3.5)
        assert got.policy == cal.policy and got.info == cal.info and got.validation == cal.validation
        assert got.sink_cells == 2
        for a, b in zip(got.layers, cal.layers):
            assert a.arrays().keys() == b.arrays().keys() and "k.pos_mean" in a.arrays()
            for k, arr in a.arrays().items():
                np.testing.assert_allclose(arr, b.arrays()[k].astype(np.float32), rtol=0, atol=0)
    # every other key and every tensor is copied unchanged
    import gguf
    src, dst = gguf.GGUFReader(str(tiny_model)), gguf.GGUFReader(str(out))
    for name, f in src.fields.items():
        assert name in dst.fields and (name.startswith("GGUF.") or dst.fields[name].contents() == f.contents()), name
    assert [t.name for t in src.tensors] == [t.name for t in dst.tensors]
    for a, b in zip(src.tensors, dst.tensors):
        assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data), a.name
    # recalibrating replaces the turbo.* keys instead of duplicating them
    again = write_model(out, tmp_path / "again.gguf", Calibration("llama", 2, cal.layers))
    assert read(again).policy == {}
    assert read(tiny_model) is None
    with pytest.raises(CalibError, match="overwrite"):
        write_model(out, out, cal)


# --- validation at load ---------------------------------------------------------------

def _kv_edit(cal: Calibration, edit):
    """A side-car writer whose key/value dict is edited by ``edit(kv)``."""
    kv = cal.kv()
    edit(kv)
    return kv


def write_raw(path, kv: dict, arch="llama"):
    import gguf
    w = gguf.GGUFWriter(str(path), arch)
    for key, (val, vt, sub) in kv.items():
        w.add_key_value(key, val.tolist() if isinstance(val, np.ndarray) else val, vt, sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def _set(key, val, vt, sub=None):
    def f(kv):
        kv[key] = (val, vt, sub)
    return f


def _drop(key):
    return lambda kv: kv.pop(key)


def _nan(key):
    def f(kv):
        v = np.array(kv[key][0], dtype=np.float32)
        v[3] = np.nan
        kv[key] = (v, kv[key][1], kv[key][2])
    return f


def _short(key):
    def f(kv):
        v = np.array(kv[key][0], dtype=np.float32)[:-1]
        kv[key] = (v, kv[key][1], kv[key][2])
    return f


def _not_inverse(key):
    def f(kv):
        v = np.array(kv[key][0], dtype=np.float32) * 1.01
        kv[key] = (v, kv[key][1], kv[key][2])
    return f


def _cases():
    import gguf
    T = gguf.GGUFValueType
    return [
        ("missing key", _drop("turbo.layer.1.k.bwd"), "turbo.layer.1.k.bwd' is missing"),
        ("wrong shape", _short("turbo.layer.0.v.fwd"), "turbo.layer.0.v.fwd' has 8191 values, expected 8192"),
        ("NaN", _nan("turbo.layer.1.k.offset"), "turbo.layer.1.k.offset' has a non-finite"),
        ("unknown version", _set("turbo.version", 2, T.UINT32), "turbo.version' is 2"),
        ("version as string", _set("turbo.version", "1", T.STRING), "turbo.version' has type str, expected u32"),
        ("layer count", _set("turbo.block_count", 3, T.UINT32), "turbo.block_count' is 3 but the model has 2"),
        ("architecture", _set("turbo.architecture", "qwen2", T.STRING), "turbo.architecture' is 'qwen2'"),
        ("not inverse", _not_inverse("turbo.layer.0.k.bwd"), "turbo.layer.0.k.bwd' is not the inverse"),
        ("V not inverse", _not_inverse("turbo.layer.1.v.bwd"), "turbo.layer.1.v.bwd' is not the inverse"),
        ("codebook", _set("turbo.codebook.turbo3", [float(x) for x in range(8)], T.ARRAY, T.FLOAT32),
         "turbo.codebook.turbo3' differs from the codebook"),
        ("policy type", _set("turbo.policy.turbo3.k", ["q8_0", "q4_k"], T.ARRAY, T.STRING),
         "turbo.policy.turbo3.k' entry 1 is 'q4_k'"),
        ("policy length", _set("turbo.policy.turbo3.v", ["q8_0"], T.ARRAY, T.STRING),
         "turbo.policy.turbo3.v' has 1 entries"),
        ("int array", _set("turbo.layer.0.k.offset", list(range(128)), T.ARRAY, T.INT32),
         "turbo.layer.0.k.offset' is an array of i32, expected float32"),
        ("sink cells", _set("turbo.sink_cells", 1000, T.UINT32), "turbo.sink_cells' is 1000; at most 64"),
        ("sink cells type", _set("turbo.sink_cells", 4.0, T.FLOAT32), "turbo.sink_cells' has type f32, expected u32"),
        ("pos_mean NaN", _nan("turbo.layer.0.k.pos_mean"), "turbo.layer.0.k.pos_mean' has a non-finite"),
        ("pos_mean shape", _short("turbo.layer.1.k.pos_mean"), "turbo.layer.1.k.pos_mean' has 127 values, expected 128"),
    ]


@pytest.mark.parametrize("name,edit,msg", _cases(), ids=[c[0] for c in _cases()])
def test_malformed_calibration_fails_at_load_naming_the_key(built, tiny_model, tmp_path, name, edit, msg):
    rng = np.random.default_rng(1)
    cal = calibration(rng, pos=True, codebooks={"turbo3": [-2.111311435699463, -1.3293428421020508, -0.7506580948829651,
                                                 -0.24375343322753906, 0.24375343322753906, 0.7506580948829651,
                                                 1.3293428421020508, 2.111311435699463]})
    side = write_raw(tmp_path / "bad.gguf", _kv_edit(cal, edit))
    with pytest.raises(RuntimeError) as e:
        load(tiny_model, side)
    assert msg in str(e.value), str(e.value)
    # the same defect inside the model file itself
    copy_model(tiny_model, tmp_path / "bad-model.gguf", _kv_edit(cal, edit))
    with pytest.raises(RuntimeError) as e:
        load(tmp_path / "bad-model.gguf")
    assert msg in str(e.value)


def test_fuzzed_calibrations_load_or_fail_cleanly(built, tiny_model, tmp_path):
    """Random corruptions of a valid side-car: each loads or fails with a message; none crashes."""
    import gguf
    T = gguf.GGUFValueType
    rng = np.random.default_rng(7)
    good = calibration(rng, policy={"turbo3": {"k": ["q8_0", "turbo3"], "v": ["turbo3", "turbo3"]}})
    outcomes = {"loaded": 0, "refused": 0}
    info = ("turbo.calibration", "turbo.validation", "turbo.budget_bpv")  # not read by the runtime
    for i in range(40):
        kv = good.kv()
        for _ in range(int(rng.integers(1, 3))):
            keys = sorted(k for k in kv if k not in info)
            key = keys[int(rng.integers(len(keys)))]
            val, vt, sub = kv[key]
            op = int(rng.integers(6))
            if op == 0:
                kv.pop(key)
            elif op == 1 and vt == T.ARRAY:
                kv[key] = (list(val)[: int(rng.integers(1, max(2, len(val))))], vt, sub)
            elif op == 2 and vt == T.ARRAY and sub == T.FLOAT32:
                v = np.array(val, dtype=np.float32)
                v[int(rng.integers(v.size))] = rng.choice([np.inf, -np.inf, np.nan, 1e30, 0.0])
                kv[key] = (v, vt, sub)
            elif op == 3:
                kv[key] = (int(rng.integers(0, 1 << 31)), T.UINT32, None)
            elif op == 4:
                kv[key] = ("x" * int(rng.integers(0, 50)), T.STRING, None)
            else:
                kv[key] = ([float(x) for x in rng.standard_normal(int(rng.integers(1, 64)))], T.ARRAY, T.FLOAT32)
        side = write_raw(tmp_path / f"fuzz{i}.gguf", kv)
        try:
            m = load(tiny_model, side)
        except RuntimeError as e:
            assert "turbo calibration" in str(e) or "LLAMA_TURBO_CALIB" in str(e), str(e)
            outcomes["refused"] += 1
        else:
            m.close()
            outcomes["loaded"] += 1
    print("\nfuzz:", outcomes)
    assert outcomes["refused"] >= 34, outcomes  # only harmless edits (e.g. an offset set to 0) may load


def test_sidecar_errors(built, tiny_model, tmp_path):
    with pytest.raises(RuntimeError, match="not a readable GGUF"):
        load(tiny_model, tmp_path / "missing.gguf")
    plain = write_raw(tmp_path / "plain.gguf", {})
    with pytest.raises(RuntimeError, match="has no turbo calibration"):
        load(tiny_model, plain)


# --- the algebra through the runtime --------------------------------------------------

@pytest.mark.parametrize("kind", ["random", "rotate", "mean", "scale", "whiten", "random+pos", "whiten+pos"])
def test_transforms_are_exact_with_a_lossless_cache(built, f32_model, tiny_text, tmp_path, kind):
    """f32 cache, f32 weights: transformed attention must give the untransformed logits
    (+pos: with the positional key offset, its logit correction through a per-head mask)."""
    rng = np.random.default_rng(2)
    pos = kind.endswith("+pos")
    kind = kind.removesuffix("+pos")
    if kind == "random":
        cal = calibration(rng, pos=pos)
    else:
        from tq_gguf.calib import ropepos
        from tq_gguf.calib.capture import Capture
        m = load(f32_model)
        t = _tokens(m, tiny_text)
        rope, why = ropepos.from_gguf(f32_model, 2, SHAPE.head_dim)
        assert rope is not None, why
        cap = Capture(m, n_ctx=256, rope=rope if pos else None)
        stats = cap.run([t])
        cap.close()
        m.close()
        assert sorted(stats) == [0, 1] and stats[0].n_k == len(t) - 1 and stats[0].n_q == 2 * stats[0].n_k
        cal = Calibration("llama", 2, fitmod.fit(stats, 2, kind, "mean", pos=pos))
        if pos:
            assert all(lt.k_pos is not None and np.abs(lt.k_pos).max() > 0 for lt in cal.layers)
    side = write_sidecar(tmp_path / "cal.gguf", cal)
    m = load(f32_model, side)
    try:
        t = _tokens(m, tiny_text)
        plain = logits(m, t, force=False)
        for fa, tk in ((False, "f32"), (True, "f16")):
            forced = logits(m, t, type_k=tk, type_v=tk, fa=fa)
            ref = plain if not fa else logits(m, t, tk, tk, fa=True, force=False)
            err = np.abs(forced - ref).max() / np.abs(ref).max()
            print(f"\n{kind} fa={fa}: max |dlogit| / max |logit| = {err:.2e}, KLD {runtime.kld(ref, forced):.2e}")
            assert err < (1e-5 if not fa else 2e-3), (kind, fa, err)
        # the transforms are really applied: a lossy cache differs from the lossless one
        lossy = logits(m, t, "turbo3", "turbo3", fa=True)
        assert runtime.kld(plain, lossy) > 1e-4
    finally:
        m.close()
    if pos:  # and the offset is: without it the same lossy cache gives other logits
        for lt in cal.layers:
            lt.k_pos = None
        m = load(f32_model, write_sidecar(tmp_path / "nopos.gguf", cal))
        try:
            nopos = logits(m, t, "turbo3", "turbo3", fa=True)
        finally:
            m.close()
        print(f"turbo3 KLD vs f32: {runtime.kld(plain, lossy):.2e} with the offset, {runtime.kld(plain, nopos):.2e} without")
        assert np.abs(lossy - nopos).max() > 1e-3 * np.abs(plain).max()


@pytest.mark.parametrize("pos", [False, True], ids=["plain", "pos"])
def test_k_shift_with_transforms_is_exact(built, f32_model, tiny_text, tmp_path, pos):
    """Shifting a transformed cache (undo, RoPE, redo) equals decoding at the shifted positions;
    with the positional offset, its correction follows the cells' new positions."""
    side = write_sidecar(tmp_path / "cal.gguf", calibration(np.random.default_rng(3), pos=pos))
    m = load(f32_model, side)
    try:
        t = _tokens(m, tiny_text)
        with runtime.environ({"LLAMA_TURBO_CALIB_FORCE": "1"}):
            s = runtime.Session(m, n_ctx=256, type_k="f32", type_v="f32", flash_attn=False)
        s.decode(t[:80], 30)
        s.seq_add(0, 30, 110, -30)
        shifted = s.decode(t[80:100], 80, all_logits=True)
        s.close()
        fresh = logits(m, t[:100], force=False)[80:]
        err = np.abs(shifted - fresh).max() / np.abs(fresh).max()
        assert err < 1e-4, err
    finally:
        m.close()


# --- per-layer policy -----------------------------------------------------------------

def test_policy_from_file_and_overrides(built, tiny_model, tmp_path):
    rng = np.random.default_rng(4)
    cal = calibration(rng, policy={"turbo3": {"k": ["q8_0", "turbo3"], "v": ["turbo3", "f16"]}})
    side = write_sidecar(tmp_path / "cal.gguf", cal)
    m = load(tiny_model, side)
    try:
        def session(env):
            mark = runtime._Log.mark()
            with runtime.environ(env):
                s = runtime.Session(m, n_ctx=4096, type_k="turbo3", type_v="turbo3")
            log = runtime._Log.since(mark)
            kv = s.kv
            s.close()
            return log, kv
        log, kv = session({"LLAMA_TURBO_POLICY": ""})
        assert "turbo layer types: K q8_0 x1, turbo3 x1 (0:q8_0); V f16 x1, turbo3 x1 (1:f16)" in log, log
        per_layer = SHAPE.n_head_kv * SHAPE.head_dim
        k_bytes = 4096 * per_layer * (34 / 32 + 26 / 64)  # one q8_0 and one turbo3 layer
        assert kv.k_mib == pytest.approx(k_bytes / 2**20, abs=0.006)
        log, kv = session({"LLAMA_TURBO_POLICY": "off"})
        assert "K turbo3 x2; V turbo3 x2" in log
        log, _ = session({"LLAMA_TURBO_POLICY": "k1=f16"})
        assert "K f16 x1, turbo3 x1 (1:f16)" in log
        with pytest.raises(RuntimeError, match="LLAMA_TURBO_POLICY: cannot read 'k7=q8_0'"):
            session({"LLAMA_TURBO_POLICY": "k7=q8_0"})
        # a type without a policy in the file is untouched
        mark = runtime._Log.mark()
        s = runtime.Session(m, n_ctx=256, type_k="turbo2", type_v="turbo2")
        s.close()
        assert "K turbo2 x2; V turbo2 x2" in runtime._Log.since(mark)
    finally:
        m.close()


# --- calibrate and inspect ------------------------------------------------------------

def test_calibrate_end_to_end_on_smollm2(built, demo_assets, tmp_path):
    from tq_gguf import paths
    model = paths.assets_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    text = paths.assets_dir() / "handbook" / "handbook.calib.txt"
    held = paths.assets_dir() / "handbook" / "handbook.test.txt"
    out = tmp_path / "sm.tq.gguf"
    r = subprocess.run([sys.executable, "-m", "tq_gguf", "calibrate", str(model), "-o", str(out), "--text", str(text),
                        "--heldout", str(held), "--tokens", "1024", "--ctx", "256", "--val-chunks", "2",
                        "--types", "turbo3", "--pos-offset"], capture_output=True, text=True, timeout=1200,
                       env={**__import__("os").environ, "TQ_GGUF_QUIET": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    cal = read(out)
    v = cal.validation
    chosen = v["kld"][v["chosen"]]["turbo3"]
    assert chosen < v["kld"]["default"]["turbo3"], v
    # candidates with and without the positional key offset were validated; the file carries it iff chosen
    assert any(n.endswith("+pos") for n in v["kld"]) and any("+pos" not in n for n in v["kld"]), v
    assert all((lt.k_pos is not None) == v["chosen"].endswith("+pos") for lt in cal.layers if lt is not None)
    # the written file runs with no extra flags and reproduces the stored validation number
    from tq_gguf.bench.caches import Cache
    from tq_gguf.bench.quality import run_ppl
    doc = run_ppl(out, held.read_text(), [Cache("turbo3", "turbo3")], ctx=256, chunks=2, show_progress=False)
    assert doc["results"][0]["kld"] == pytest.approx(chosen, rel=1e-3)
    r = subprocess.run([sys.executable, "-m", "tq_gguf", "inspect", str(out), str(model)], capture_output=True, text=True)
    assert r.returncode == 0
    assert "turbo calibration v1 for llama, 30 layers" in r.stdout and "<- chosen" in r.stdout
    assert "positional key offset: " in r.stdout
    assert "no turbo calibration" in r.stdout


def test_calibrate_refuses_a_calibration_worse_than_default(built, tiny_model, tiny_text, tmp_path, monkeypatch):
    from tq_gguf.calib import calibrate
    real_fit = fitmod.fit

    def bad_fit(stats, n_layer, k_kind, v_kind, **kw):
        layers = real_fit(stats, n_layer, "rotate", "rotate")
        for lt in layers:  # a badly conditioned K transform: most of the key lands in one coordinate
            a = lt.k_fwd @ np.diag(np.r_[1e3, np.ones(lt.k_fwd.shape[-1] - 1)])
            lt.k_fwd, lt.k_bwd = a, np.linalg.inv(a).transpose(0, 2, 1)
        return layers

    monkeypatch.setattr(fitmod, "fit", bad_fit)
    out = tmp_path / "out.gguf"
    st = calibrate.Settings(text=tiny_text, heldout=tiny_text, tokens=512, ctx=256, val_chunks=2,
                            types=("turbo3",), kinds=(calibrate.Candidate("scale", "mean"),))
    with pytest.raises(CalibError, match="no calibration beat the uncalibrated default"):
        calibrate.run(tiny_model, out, st)
    assert not out.exists() and not list(tmp_path.glob(".out.gguf.*"))


@pytest.mark.parametrize("args,msg", [
    (["calibrate", "{tiny}", "-o", "{tmp}/o.gguf", "--types", "q4_0"], "is not a turbo type"),
    (["calibrate", "{tmp}/nope.gguf", "-o", "{tmp}/o.gguf"], "no such file"),
    (["calibrate", "{notgguf}", "-o", "{tmp}/o.gguf"], "not a readable GGUF"),
    (["calibrate", "{tiny}", "-o", "{tmp}/o.gguf", "--tokens", "10"], "less than one sequence"),
    (["calibrate", "{tiny}", "-o", "{tmp}/o.gguf", "--sink-cells", "99"], "--sink-cells 99: give 0 (off) to 64"),
    (["inspect", "{notgguf}"], "not a readable GGUF"),
])
def test_calibrate_errors_are_clear(built, tiny_model, tmp_path, args, msg):
    bad = tmp_path / "text.gguf"
    bad.write_text("not a gguf")
    argv = [a.format(tiny=tiny_model, tmp=tmp_path, notgguf=bad) for a in args]
    r = subprocess.run([sys.executable, "-m", "tq_gguf", *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and msg in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("fa", [False, True], ids=["softmax", "flash"])
def test_transforms_exact_one_token_at_a_time(built, f32_model, tiny_text, tmp_path, fa):
    """Decode (one token per batch) takes the copy-free path of the per-head matmuls; zero means
    are skipped; layer 0's positional offset takes one query row of its mask: all must stay exact."""
    rng = np.random.default_rng(5)
    layers = [random_transform(rng) for _ in range(2)]
    layers[1].v_mean[:] = 0.0  # layer 1: no value mean
    layers[0].k_pos = 3.0 * rng.standard_normal(layers[0].k_off.shape)
    side = write_sidecar(tmp_path / "cal.gguf", Calibration("llama", 2, layers))
    m = load(f32_model, side)
    try:
        t = _tokens(m, tiny_text)[:40]
        out = {}
        tk = "f16" if fa else "f32"
        for force in (False, True):
            with runtime.environ({"LLAMA_TURBO_CALIB_FORCE": "1" if force else "0"}):
                s = runtime.Session(m, n_ctx=256, type_k=tk, type_v=tk, flash_attn=fa)
            s.decode(t[:20], 0)
            out[force] = np.stack([s.decode([tok], 20 + i) for i, tok in enumerate(t[20:])])
            s.close()
        err = np.abs(out[True] - out[False]).max() / np.abs(out[False]).max()
        assert err < (2e-3 if fa else 1e-5), err
    finally:
        m.close()


def test_transforms_exact_with_one_kv_head(built, tiny_text, tmp_path):
    """One KV head (MQA, as Gemma-3-270M): the per-head matmuls' outputs must keep row strides
    the cache copy accepts, in batched prefill, one-token decode and the K-shift."""
    shape = TinyShape(n_head=4, n_head_kv=1)
    path = write_tiny_llama(tmp_path / "mqa-f32.gguf", shape, dtype=np.float32)
    rng = np.random.default_rng(8)
    layers = [random_transform(rng, h=1) for _ in range(shape.n_layer)]
    side = write_sidecar(tmp_path / "cal.gguf", Calibration("llama", shape.n_layer, layers))
    m = load(path, side)
    try:
        t = _tokens(m, tiny_text)
        plain = logits(m, t, force=False)
        forced = logits(m, t)
        assert np.abs(forced - plain).max() / np.abs(plain).max() < 1e-5
        with runtime.environ({"LLAMA_TURBO_CALIB_FORCE": "1"}):
            s = runtime.Session(m, n_ctx=256, type_k="f32", type_v="f32", flash_attn=False)
        try:
            s.decode(t[:80], 30)
            s.seq_add(0, 30, 110, -30)
            steps = np.stack([s.decode([tok], 80 + i) for i, tok in enumerate(t[80:100])])
        finally:
            s.close()
        err = np.abs(steps - plain[80:100]).max() / np.abs(plain).max()
        assert err < 1e-4, err
        assert runtime.kld(plain, logits(m, t, "turbo3", "turbo3", fa=True)) > 1e-4
    finally:
        m.close()
