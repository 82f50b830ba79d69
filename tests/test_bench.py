"""The benchmark harness (tq-gguf ppl / speed / niah) on the tiny model."""

import json
import math

import jsonschema
import numpy as np
import pytest

from tq_gguf import cli, perplexity
from tq_gguf.bench import caches, quality, report

pytestmark = pytest.mark.build
CTX, CHUNKS = 256, 4


@pytest.fixture(scope="module")
def ppl_doc(built, tiny_model, tiny_text):
    body = quality.run_ppl(tiny_model, tiny_text.read_text(), caches.parse("f16,q8_0,turbo3"), ctx=CTX,
                           chunks=CHUNKS, show_progress=False)
    return report.envelope("ppl", tiny_model, body, argv=["ppl", "test"], text=tiny_text)


def _row(doc, name):
    return next(r for r in doc["results"] if r["cache"] == name)


def test_ppl_agrees_with_llama_perplexity(ppl_doc, tiny_model, tiny_text, tmp_path):
    base = tmp_path / "base.kld"
    b = perplexity.save_kld_base(tiny_model, tiny_text, base, ctx=CTX, chunks=CHUNKS)
    ref = ppl_doc["reference"]
    assert abs(ref["ppl"] - b.ppl) <= 0.25 * b.err, (ref, b.ppl, b.err)
    for name in ("q8_0", "turbo3"):
        theirs = perplexity.kl_divergence(tiny_model, base, CTX, CHUNKS, name, name)
        ours = _row(ppl_doc, name)
        assert abs(ours["ppl"] - theirs.ppl) <= 0.25 * theirs.ppl_err, (name, ours["ppl"], theirs.ppl)
        # theirs stores the base as 16-bit log-probs and drops p < e^-16: agree within the errors
        tol = 2 * math.hypot(ours["kld_err"], theirs.kld_err) + 0.02 * theirs.kld + 1e-6  # printed to 6 places
        assert abs(ours["kld"] - theirs.kld) <= tol, (name, ours["kld"], theirs.kld)
        assert abs(100 * ours["same_top"] - theirs.same_top) <= 100 * 2 * ours["same_top_err"] + 0.5
        assert abs(ours["ppl_ratio"] - theirs.ppl_ratio) <= 2 * theirs.ppl_ratio_err + 1e-3


def test_f16_against_itself_is_zero_and_a_corrupted_cache_is_not(ppl_doc, tiny_model, tiny_text):
    f16 = _row(ppl_doc, "f16")
    assert f16["kld"] == 0.0 and f16["same_top"] == 1.0 and f16["ppl_ratio"] == 1.0
    assert 0 < _row(ppl_doc, "q8_0")["kld"] < _row(ppl_doc, "turbo3")["kld"]

    def corrupt(session, toks, first):  # the cached half replaced by other tokens
        session.clear()
        other = np.random.default_rng(0).integers(0, 256, first)
        session.eval(other, 0, outputs=np.zeros(first, bool))

    bad = quality.run_ppl(tiny_model, tiny_text.read_text(), [caches.F16], ctx=CTX, chunks=CHUNKS,
                          tamper=corrupt, show_progress=False)["results"][0]
    assert bad["kld"] > 5 * _row(ppl_doc, "turbo3")["kld"], bad["kld"]
    assert bad["same_top"] < 0.9


def test_ppl_json_follows_the_schema_and_plots(ppl_doc, tmp_path):
    report.validate(ppl_doc)
    report.write_json(ppl_doc, tmp_path / "p.json")
    back = json.loads((tmp_path / "p.json").read_text())
    report.validate(back)
    broken = json.loads(json.dumps(back))
    broken["results"][1]["kld"] = -1.0
    with pytest.raises(jsonschema.ValidationError):
        report.validate(broken)
    broken = dict(back, schema="tq-gguf.bench/0")
    with pytest.raises(jsonschema.ValidationError):
        report.validate(broken)
    png = report.plot(back, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "turbo3" in report.markdown(back)


def test_speed_command_both_engines(built, tiny_model, tmp_path):
    stem = tmp_path / "speed"
    rc = cli.main(["speed", str(tiny_model), "--cache", "turbo3", "--depths", "0,64", "--prompt", "32",
                   "--gen", "4", "--reps", "2", "-t", "2", "--engine", "both", "-o", str(stem)])
    assert rc == 0
    doc = json.loads(stem.with_suffix(".json").read_text())
    report.validate(doc)
    got = {(r["engine"], r["cache"], r["test"], r["depth"]) for r in doc["results"]}
    for eng in ("bindings", "llama-bench"):
        for c in ("f16", "q8_0", "turbo3"):  # the baselines are added to every run
            for t in ("pp32", "tg4"):
                for d in (0, 64):
                    assert (eng, c, t, d) in got
    for r in doc["results"]:
        assert r["tok_s"] > 0
        if r["cache"] == "f16":
            assert r["vs_f16"] == pytest.approx(1.0)
    mem = {m["cache"]: m["kv_bytes_per_token_layer"] for m in doc["memory"]}
    assert mem["turbo3"] / mem["f16"] == pytest.approx(3.25 / 16, rel=0.02)
    assert stem.with_suffix(".png").stat().st_size > 5000


def test_niah_command(built, tiny_model, tiny_text, tmp_path):
    stem = tmp_path / "niah"
    rc = cli.main(["niah", str(tiny_model), "--text", str(tiny_text), "--cache", "f16,turbo3", "--lengths", "512",
                   "--depths", "0,1", "--trials", "1", "-t", "2", "-o", str(stem)])
    assert rc == 0
    doc = json.loads(stem.with_suffix(".json").read_text())
    report.validate(doc)
    assert len(doc["results"]) == 4 and {s["cache"] for s in doc["summary"]} == {"f16", "turbo3"}
    assert stem.with_suffix(".png").stat().st_size > 3000


@pytest.mark.parametrize("args,msg", [
    (["ppl", "/nonexistent.gguf", "--text", "/dev/null"], "no such model file"),
    (["ppl", "{model}", "--text", "{text}", "--cache", "q3_k"], "unknown type 'q3_k'"),
    (["ppl", "{model}", "--text", "{text}", "--ctx", "16384"], "at least 32768 are needed"),
    (["speed", "{model}", "--depths", "0,x"], "--depths"),
    (["ppl", "{text}", "--text", "{text}"], "could not load model"),
    (["niah", "{model}", "--text", "{text}", "--depths", "0,1.5"], "fractions in [0, 1]"),
])
def test_bench_errors_are_clear(built, tiny_model, tiny_text, capsys, args, msg):
    argv = [a.format(model=tiny_model, text=tiny_text) for a in args]
    assert cli.main(argv) == 1
    assert msg in capsys.readouterr().err


def test_plot_command_redraws_and_rejects_non_results(ppl_doc, tmp_path, capsys):
    f = tmp_path / "r.json"
    report.write_json(ppl_doc, f)
    assert cli.main(["plot", str(f)]) == 0
    assert f.with_suffix(".png").stat().st_size > 5000
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "tq-gguf.bench/1", "kind": "ppl"}')
    assert cli.main(["plot", str(bad)]) == 1
    assert "does not follow the bench schema" in capsys.readouterr().err


def test_demo_main_job_end_to_end(built, demo_assets, tmp_path):
    """The README's main job on the embedded model and text (small settings)."""
    from tq_gguf import demo
    assert demo.run(ctx=256, chunks=2, skip_build=True, out=tmp_path, speed=False) == 0
    doc = json.loads((tmp_path / "demo-ppl.json").read_text())
    report.validate(doc)
    got = {r["cache"]: r for r in doc["results"]}
    assert set(got) == {"f16", "q8_0", "q4_0", "turbo3", "q8_0/turbo3", "turbo2"}
    assert got["f16"]["kld"] == 0.0
    # a real model tells the bit widths apart
    assert got["q8_0"]["kld"] < got["q4_0"]["kld"] < got["turbo2"]["kld"]
    assert got["turbo3"]["kld"] < got["turbo2"]["kld"]


def test_published_schemas_match_the_code():
    from pathlib import Path
    from tq_gguf.bench import schema
    d = Path(__file__).resolve().parents[1] / "docs" / "schema"
    for name, sch in schema.PUBLISHED.items():
        assert (d / name).read_text() == schema.dumps(sch), f"regenerate: python -m tq_gguf.bench.schema docs/schema"
