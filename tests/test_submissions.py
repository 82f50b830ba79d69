"""Community submissions: generate, validate, reject bad ones, build the leaderboard."""

import json
import os

import pytest

from tq_gguf import cli
from tq_gguf.bench import leaderboard, submission

pytestmark = pytest.mark.build

SMALL = ["--ctx", "256", "--chunks", "2", "--depths", "0,64", "--reps", "1", "--prompt", "32", "--gen", "4",
         "--niah-lengths", "512", "--niah-trials", "1", "-ngl", "0", "-t", "2"]


@pytest.fixture(scope="module")
def good(built, tiny_model, tiny_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("sub") / "tiny.json"
    assert cli.main(["bench", "community", str(tiny_model), "-o", str(out), "--text", str(tiny_text), *SMALL]) == 0
    assert not out.with_name(out.name + ".partial").exists()
    return out


def test_a_generated_submission_validates_and_is_complete(good):
    doc = submission.load(good)
    r = doc["results"]
    assert {x["cache"] for x in r["ppl"]} == set(doc["settings"]["caches"])
    assert {(x["cache"], x["test"], x["depth"]) for x in r["speed"]} >= {("turbo3", "tg4", 64), ("f16", "pp32", 0)}
    assert len(r["niah"]) == 6 * 3 and r["speed_skipped"] == []
    assert len(doc["tq_gguf"]["series_sha256"]) == 64 and doc["hardware"]["backend"] == "cpu"
    assert cli.main(["submission", "validate", str(good)]) == 0


def test_an_interrupted_run_resumes(built, tiny_model, tiny_text, tmp_path, monkeypatch, capsys):
    from tq_gguf.bench import niah
    out = tmp_path / "r.json"
    real = niah.run_niah

    def stop_at_turbo3(model, text, caches, *a, **k):
        if caches[0].name == "turbo3":
            raise KeyboardInterrupt
        return real(model, text, caches, *a, **k)

    monkeypatch.setattr(niah, "run_niah", stop_at_turbo3)
    args = ["bench", "community", str(tiny_model), "-o", str(out), "--text", str(tiny_text), *SMALL]
    assert cli.main(args) == 130
    partial = json.loads(out.with_name("r.json.partial").read_text())
    assert "niah:q4_0" in partial["done"] and "niah:turbo3" not in partial["done"]
    monkeypatch.setattr(niah, "run_niah", real)
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "resuming: 10 steps already done" in capsys.readouterr().err
    doc = submission.load(out)
    assert doc["results"]["ppl"] == partial["done"]["ppl"]["results"]  # taken from the partial, not re-run


def _bad_corpus(good, d):
    doc = json.loads(good.read_text())
    text = good.read_text()

    def put(name, obj):
        (d / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))

    def edit(name, f):
        x = json.loads(text)
        f(x)
        put(name, x)

    put("truncated.json", text[: len(text) // 2])
    edit("old-schema.json", lambda x: x.update(schema="tq-gguf.submission/0"))
    edit("negative-speed.json", lambda x: x["results"]["speed"][0].update(tok_s=-5.0))
    put("nan-speed.json", text.replace(f'"tok_s": {doc["results"]["speed"][0]["tok_s"]}', '"tok_s": NaN', 1))
    edit("bad-hash.json", lambda x: x["model"].update(sha256="12345xyz"))
    edit("mismatched-series.json", lambda x: x["tq_gguf"].update(series_sha256="0" * 64))
    edit("markup.json", lambda x: x["model"].update(file="<script>alert(1)</script>.gguf"))
    edit("md-link.json", lambda x: x["hardware"].update(cpu="[click](https://example.com)"))
    edit("missing-depth.json", lambda x: x["results"].update(
        speed=[r for r in x["results"]["speed"] if not (r["cache"] == "turbo3" and r["depth"] == 64)]))
    edit("f16-not-zero.json", lambda x: next(r for r in x["results"]["ppl"] if r["cache"] == "f16").update(kld=0.5))
    put("array.json", "[1, 2, 3]")
    (d / "binary.json").write_bytes(b"\xff\xfe{\x00\x00")
    with open(d / "huge.json", "wb") as f:  # 100 MB, sparse: refused before it is read
        f.truncate(100 * 2**20)
    return {"truncated.json": "not valid JSON", "old-schema.json": "expected 'tq-gguf.submission/1'",
            "negative-speed.json": "tok_s", "nan-speed.json": "non-finite number NaN",
            "bad-hash.json": "sha256", "mismatched-series.json": "does not match series_sha256", "markup.json": "markup", "md-link.json": "markup",
            "missing-depth.json": "depths [64] neither measured", "f16-not-zero.json": "expected 0",
            "array.json": "not an object", "binary.json": "not UTF-8", "huge.json": "larger than"}


def test_bad_submissions_are_rejected_with_their_reason(good, tmp_path):
    expect = _bad_corpus(good, tmp_path)
    for name, why in expect.items():
        with pytest.raises(submission.Invalid) as e:
            submission.load(tmp_path / name)
        assert why in str(e.value), (name, str(e.value))


def test_leaderboard_from_good_bad_and_duplicate(good, tmp_path, capsys):
    d = tmp_path / "subs"
    d.mkdir()
    expect = _bad_corpus(good, d)
    (d / "good.json").write_text(good.read_text())
    dup = json.loads(good.read_text())
    dup["created"] = "2030-01-01T00:00:00Z"  # same results, other time: a duplicate
    (d / "good-again.json").write_text(json.dumps(dup))
    out = tmp_path / "board.md"
    assert cli.main(["leaderboard", str(d), "-o", str(out), "--plots", str(tmp_path / "plots")]) == 0
    md = out.read_text()
    assert "| tiny-llama.gguf | turbo3 | 3.25 |" in md
    assert md.count("| tiny-llama.gguf |") == 6  # one row per cache, the duplicate once
    assert "Duplicates (counted once)" in md
    for name in expect:
        assert f"`{name}`" in md
    assert "<script>" not in md
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "quality-vs-bits.png" in pngs and len(pngs) == 2
    assert all((tmp_path / "plots" / p).stat().st_size > 3000 for p in pngs)
    good_docs, bad, dups = leaderboard.collect(d)
    assert len(good_docs) == 1 and len(bad) == len(expect) and len(dups) == 1


def test_validate_command_exit_status(good, tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    assert cli.main(["submission", "validate", str(good), str(tmp_path / "x.json")]) == 1
    out = capsys.readouterr().out
    assert "ok (tiny-llama.gguf" in out and "x.json: INVALID" in out
    assert os.path.exists(good)


def test_the_committed_leaderboard_is_generated_from_submissions(tmp_path):
    """docs/leaderboard.md is a build product of submissions/: regenerate it when adding one."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    good, bad, dups = leaderboard.collect(root / "submissions")
    assert good and not bad, bad
    assert leaderboard.markdown(Path("submissions"), good, bad, dups) == (root / "docs" / "leaderboard.md").read_text(), \
        "run: tq-gguf leaderboard submissions -o docs/leaderboard.md --plots docs/leaderboard"


def test_a_depth_that_does_not_fit_is_recorded_as_skipped(built, tiny_model, tiny_text, tmp_path, monkeypatch):
    from tq_gguf.bench import speed
    real = speed.run_speed

    def no_room_at_64(model, caches, depths, *a, **k):
        if 64 in depths:
            raise RuntimeError("could not create a context (out of memory, simulated)")
        return real(model, caches, depths, *a, **k)

    monkeypatch.setattr(speed, "run_speed", no_room_at_64)
    out = tmp_path / "s.json"
    assert cli.main(["bench", "community", str(tiny_model), "-o", str(out), "--text", str(tiny_text), *SMALL]) == 0
    doc = submission.load(out)
    r = doc["results"]
    assert {(x["cache"], x["depth"]) for x in r["speed_skipped"]} == {(c, 64) for c in doc["settings"]["caches"]}
    assert {x["depth"] for x in r["speed"]} == {0}
    assert "out of memory, simulated" in r["speed_skipped"][0]["reason"]
