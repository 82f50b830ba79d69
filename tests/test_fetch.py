import os
import subprocess
import sys
import time

import pytest

from tq_gguf import fetch, pinned


def test_checksum_mismatch_is_refused(tmp_path):
    bogus = tmp_path / pinned.LLAMA_CPP_PYTHON.sdist_name
    bogus.write_bytes(b"not the sdist")
    with pytest.raises(fetch.ChecksumError) as e:
        fetch.get_sdist(tmp_path / "cache", offline_file=bogus)
    msg = str(e.value)
    assert pinned.LLAMA_CPP_PYTHON.sha256 in msg and fetch.sha256_file(bogus) in msg


def test_corrupt_cached_sdist_is_refused(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / pinned.LLAMA_CPP_PYTHON.sdist_name).write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(fetch.ChecksumError, match="sha256 mismatch"):
        fetch.get_sdist(cache)


def test_cli_reports_checksum_mismatch(tmp_path):
    bogus = tmp_path / "x.tar.gz"
    bogus.write_bytes(b"junk")
    env = dict(os.environ, TQ_GGUF_HOME=str(tmp_path / "home"))
    r = subprocess.run([sys.executable, "-m", "tq_gguf", "build", "--no-bindings", "--sdist", str(bogus)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert "sha256 mismatch" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "home" / "src").exists()


def test_pinned_sdist_verifies(sdist):
    assert fetch.sha256_file(sdist) == pinned.LLAMA_CPP_PYTHON.sha256


def test_extract_drops_vcs_metadata(pristine):
    assert (pristine / pinned.VENDOR_DIR / "CMakeLists.txt").exists()
    assert not (pristine / ".git").exists()
    assert not (pristine / pinned.VENDOR_DIR / ".git").exists()


def test_sync_tree_rewrites_only_changed_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a").mkdir(parents=True)
    (src / "a" / "same.c").write_text("same")
    (src / "a" / "changed.c").write_text("new")
    (src / "added.c").write_text("added")
    (dst / "a").mkdir(parents=True)
    (dst / "a" / "same.c").write_text("same")
    (dst / "a" / "changed.c").write_text("old")
    (dst / "gone.c").write_text("gone")
    (dst / "gonedir").mkdir()
    (dst / "gonedir" / "x.c").write_text("x")
    old = time.time() - 1000
    os.utime(dst / "a" / "same.c", (old, old))
    n = fetch.sync_tree(src, dst)
    assert n == 4  # changed, added, gone.c, gonedir/x.c
    assert (dst / "a" / "changed.c").read_text() == "new"
    assert (dst / "added.c").exists() and not (dst / "gone.c").exists()
    assert not (dst / "gonedir").exists()
    assert abs((dst / "a" / "same.c").stat().st_mtime - old) < 1
    assert fetch.sync_tree(src, dst) == 0
