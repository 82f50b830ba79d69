"""A git work tree of the pinned sdist for writing and regenerating patches.

``tq-gguf patches prepare DIR`` extracts the pristine sdist into DIR, commits
it, then ``git am``s the series (or its first ``--upto N`` patches), one commit
per patch. Edit, commit, and regenerate the series with ``git format-patch``
(see patches/README.md).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import subprocess
from pathlib import Path

from . import build, fetch, paths, pinned
from .progress import StageError

GIT_ID = ["-c", "user.name=tq-gguf", "-c", "user.email=dev@tq-gguf"]


def _git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(cwd.parent))
    r = subprocess.run(["git", *GIT_ID, *args], cwd=cwd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise StageError(f"git {' '.join(args[:2])} failed in {cwd}:\n{r.stderr.strip()}")
    return r.stdout


def prepare(dest: Path, upto: int | None = None) -> Path:
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise StageError(f"{dest} exists and is not empty")
    sdist = fetch.get_sdist(paths.sdist_dir(), log=print)
    tmp = dest.parent / (dest.name + ".extract")
    root = fetch.extract(sdist, tmp)
    shutil.move(str(root), str(dest))
    shutil.rmtree(tmp, ignore_errors=True)
    _git(dest, "init", "-q")
    # commits made by hand in the tree carry the series' author too (patch headers stay uniform)
    _git(dest, "config", "user.name", "tq-gguf")
    _git(dest, "config", "user.email", "dev@tq-gguf")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", f"pristine {pinned.LLAMA_CPP_PYTHON.sdist_name}")
    _git(dest, "tag", "pristine")
    patches, cuda, _ = build.series_info()
    if cuda:
        target = dest / pinned.CUDA_DEST
        for f in cuda:
            t = target / f.relative_to(paths.cuda_dir())
            t.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, t)
        _git(dest, "add", "-A")
        _git(dest, "commit", "-q", "-m", "cuda/ sources (edit them in the tq-gguf checkout)")
        _git(dest, "tag", "cuda")
    for p in patches:
        if upto is not None and p.number > upto:
            break
        _git(dest, "am", "-q", "--keep-cr", str(p.path))
        print(f"applied {p.name}")
    print(f"{dest}: base tag '{'cuda' if cuda else 'pristine'}', one commit per patch")
    return dest


def export(tree: Path, out_dir: Path) -> list[Path]:
    """Regenerate the series from ``tree``'s commits after its base tag.

    Commit subjects read ``short-name: what it does``; commit i becomes
    ``out_dir/NNNN-short-name.patch`` (old NNNN-*.patch files are replaced).
    """
    tree, out_dir = Path(tree).resolve(), Path(out_dir).resolve()
    tags = _git(tree, "tag", "--list").split()
    base = "cuda" if "cuda" in tags else "pristine"
    if base not in tags:
        raise StageError(f"{tree} has no 'pristine' tag: make it with `tq-gguf patches prepare`")
    tmp = Path(tempfile.mkdtemp(prefix="tq-series-"))
    try:
        _git(tree, "format-patch", "-q", "--zero-commit", "--no-signature", "--no-numbered",
             "-o", str(tmp), f"{base}..HEAD")
        made = sorted(tmp.glob("*.patch"))
        if not made:
            raise StageError(f"no commits after '{base}' in {tree}")
        for old in out_dir.glob("[0-9][0-9][0-9][0-9]-*.patch"):
            old.unlink()
        written = []
        for i, f in enumerate(made, 1):
            subject = next((l for l in f.read_text().splitlines() if l.startswith("Subject:")), "")
            m = re.match(r"Subject:\s*(\[PATCH[^\]]*\]\s*)?([A-Za-z0-9._-]+):", subject)
            if not m:
                raise StageError(f"commit subject must start with 'short-name:': {subject!r}")
            dst = out_dir / f"{i:04d}-{m.group(2)}.patch"
            shutil.copy(f, dst)
            written.append(dst)
            print(f"wrote {dst.name}")
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
