import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tq_gguf import build, paths, patchset

REPO = Path(__file__).resolve().parent.parent

BAD_PATCH = """\
From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
From: test <test@example>
Subject: [PATCH] bad: context that is not in the pinned tree

---
 vendor/llama.cpp/src/llama.cpp | 1 +
 1 file changed, 1 insertion(+)

diff --git a/vendor/llama.cpp/src/llama.cpp b/vendor/llama.cpp/src/llama.cpp
--- a/vendor/llama.cpp/src/llama.cpp
+++ b/vendor/llama.cpp/src/llama.cpp
@@ -1,3 +1,4 @@
 this line is not in llama.cpp
 nor is this one
+int tq_never_applied = 1;
 or this
"""


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def series():
    return patchset.load_series(REPO / "patches")


def test_series_is_numbered_and_nonempty():
    s = series()
    assert s, "the series must have at least one patch"
    assert [p.number for p in s] == sorted(p.number for p in s)
    assert all(p.subject() for p in s), "every patch needs a Subject header saying what it does"


def test_series_applies_to_fresh_sdist(fresh_tree):
    s = series()
    src = fresh_tree / "vendor/llama.cpp"
    pristine = tree_digest(src)
    patchset.apply_series(fresh_tree, s)
    assert patchset.read_stamp(fresh_tree) == [p.name for p in s]
    text = (src / "include/llama.h").read_text()
    assert "llama_tq_version" in text
    # every patch is present: undone last to first, the series gives back the pristine tree
    # (a later patch may change an earlier one's lines, so each reverses only after those after it)
    for p in reversed(s):
        r = patchset._git_apply(fresh_tree, p.path, "--reverse")
        assert r.returncode == 0, (p.name, r.stderr)
    assert tree_digest(src) == pristine


def test_applying_twice_is_detected_and_changes_nothing(fresh_tree):
    s = series()
    patchset.apply_series(fresh_tree, s)
    before = tree_digest(fresh_tree / "vendor/llama.cpp/src")
    with pytest.raises(patchset.AlreadyAppliedError, match="already patched"):
        patchset.apply_series(fresh_tree, s)
    # without the stamp, the reverse check still catches it
    (fresh_tree / patchset.STAMP).unlink()
    with pytest.raises(patchset.AlreadyAppliedError, match=s[0].name):
        patchset.apply_series(fresh_tree, s)
    assert tree_digest(fresh_tree / "vendor/llama.cpp/src") == before


def test_failing_patch_names_patch_and_file(fresh_tree, tmp_path):
    pdir = tmp_path / "patches"
    pdir.mkdir()
    good = series()[0]
    shutil.copy(good.path, pdir / good.name)
    (pdir / "0099-bad.patch").write_text(BAD_PATCH)
    s = patchset.load_series(pdir)
    with pytest.raises(patchset.PatchError) as e:
        patchset.apply_series(fresh_tree, s)
    assert e.value.patch == "0099-bad.patch"
    assert "vendor/llama.cpp/src/llama.cpp" in e.value.files
    assert "0099-bad.patch" in str(e.value) and "vendor/llama.cpp/src/llama.cpp" in str(e.value)
    src = (fresh_tree / "vendor/llama.cpp/src/llama.cpp").read_text()
    assert "tq_never_applied" not in src           # the bad one left no trace
    assert "llama_tq_version" in src               # the good one before it applied
    assert not (fresh_tree / patchset.STAMP).exists()


def test_cli_build_stops_on_failing_patch(scratch_home, tmp_path):
    pdir = tmp_path / "patches"
    pdir.mkdir()
    (pdir / "0001-bad.patch").write_text(BAD_PATCH)
    env = dict(os.environ, TQ_GGUF_PATCHES=str(pdir))
    r = subprocess.run([sys.executable, "-m", "tq_gguf", "build", "--no-bindings"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert "patch 0001-bad.patch does not apply to vendor/llama.cpp/src/llama.cpp" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (scratch_home / "src").exists()       # nothing half-patched left behind
    assert not (scratch_home / "build").exists()     # and nothing configured


@pytest.mark.parametrize("names,match", [
    (["foo.patch"], "NNNN-short-name"),
    (["0001-a.patch", "0001-b.patch"], "also used by"),
])
def test_malformed_series_names(tmp_path, names, match):
    for n in names:
        (tmp_path / n).write_text(BAD_PATCH)
    with pytest.raises(patchset.PatchError, match=match):
        patchset.load_series(tmp_path)


def test_series_hash_tracks_content(tmp_path):
    shutil.copytree(REPO / "patches", tmp_path / "p")
    a = patchset.series_hash(patchset.load_series(tmp_path / "p"))
    f = sorted((tmp_path / "p").glob("*.patch"))[0]
    f.write_text(f.read_text() + "\n")
    b = patchset.series_hash(patchset.load_series(tmp_path / "p"))
    assert a != b


def test_changed_patch_resyncs_only_what_it_touches(scratch_home, sdist, tmp_path, monkeypatch):
    class Quiet:
        def log(self, m):
            pass

    s = series()
    cuda_root = paths.cuda_dir()
    assert build.prepare_source(sdist, s, [], "hash-a", Quiet())
    src = paths.src_dir()
    assert not build.prepare_source(sdist, s, [], "hash-a", Quiet())  # unchanged: no work
    untouched = src / "vendor/llama.cpp/ggml/src/ggml.c"
    mtime = untouched.stat().st_mtime_ns
    # a second patch that touches one file
    pdir = tmp_path / "p"
    shutil.copytree(REPO / "patches", pdir)
    extra = pdir / "0999-extra.patch"
    first = (src / "vendor/llama.cpp/src/llama-impl.cpp").read_text().splitlines()[:3]
    extra.write_text(
        "Subject: [PATCH] test: one more line\n---\n"
        "--- a/vendor/llama.cpp/src/llama-impl.cpp\n+++ b/vendor/llama.cpp/src/llama-impl.cpp\n"
        "@@ -1,3 +1,4 @@\n+// tq-gguf test line\n" + "".join(f" {l}\n" for l in first))
    s2 = patchset.load_series(pdir)
    assert build.prepare_source(sdist, s2, [], "hash-b", Quiet())
    assert "tq-gguf test line" in (src / "vendor/llama.cpp/src/llama-impl.cpp").read_text()
    assert untouched.stat().st_mtime_ns == mtime
