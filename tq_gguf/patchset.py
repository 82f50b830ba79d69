"""The numbered patch series: discovery, hashing and application.

A series is ``patches/NNNN-short-name.patch`` files (``git format-patch``
output: a mail header saying what the patch changes and why, then the diff,
paths relative to the sdist root). They apply in numeric order with
``git apply``; the first one that does not apply stops everything with an
error naming the patch and the files it could not change.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import pinned

_NAME = re.compile(r"^(\d{4})-[A-Za-z0-9._-]+\.patch$")
# Written into a patched tree; a tree that has one is never patched again.
STAMP = ".tq-series"


class PatchError(RuntimeError):
    """A patch of the series does not apply (or is malformed)."""

    def __init__(self, patch: str, files: list[str], detail: str):
        self.patch, self.files, self.detail = patch, files, detail
        where = ", ".join(files) if files else "(no file named by git)"
        super().__init__(f"patch {patch} does not apply to {where}\n{detail.strip()}")


class AlreadyAppliedError(RuntimeError):
    """The tree already carries (part of) the series."""


@dataclass(frozen=True)
class Patch:
    number: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def subject(self) -> str:
        for line in self.path.read_text(errors="replace").splitlines():
            if line.startswith("Subject:"):
                return re.sub(r"^Subject:\s*(\[PATCH[^\]]*\]\s*)?", "", line).strip()
        return ""


def load_series(directory: Path) -> list[Patch]:
    """The patches of ``directory`` in order; stray *.patch names are an error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"patch directory not found: {directory}")
    series: list[Patch] = []
    seen: dict[int, str] = {}
    for p in sorted(directory.glob("*.patch")):
        m = _NAME.match(p.name)
        if not m:
            raise PatchError(p.name, [], "patch names must look like NNNN-short-name.patch")
        n = int(m.group(1))
        if n in seen:
            raise PatchError(p.name, [], f"number {n:04d} is also used by {seen[n]}")
        seen[n] = p.name
        series.append(Patch(n, p))
    return series


def cuda_files(directory: Path) -> list[Path]:
    """CUDA sources that travel with the series (docs excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix != ".md")


def series_hash(patches: list[Patch], cuda: list[Path] = (), cuda_root: Path | None = None) -> str:
    """sha256 over the series' names and bytes (and the cuda/ sources)."""
    h = hashlib.sha256()
    h.update(f"pin:{pinned.LLAMA_CPP_PYTHON.sha256}\0".encode())
    for p in patches:
        h.update(f"patch:{p.name}\0".encode())
        h.update(p.path.read_bytes())
    for f in cuda:
        rel = f.relative_to(cuda_root) if cuda_root else Path(f.name)
        h.update(f"cuda:{rel.as_posix()}\0".encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _git_apply(tree: Path, patch: Path, *flags: str) -> subprocess.CompletedProcess:
    if shutil.which("git") is None:
        raise RuntimeError("git is needed to apply the patch series (apt-get install git)")
    env = dict(os.environ)
    # Never let git treat an enclosing repository as the root of the paths.
    env["GIT_CEILING_DIRECTORIES"] = str(Path(tree).resolve().parent)
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    return subprocess.run(
        ["git", "apply", "--whitespace=nowarn", *flags, str(Path(patch).resolve())],
        cwd=tree, env=env, capture_output=True, text=True)


_FILE_PATTERNS = (
    re.compile(r"error: patch failed: (.+?):\d+"),
    re.compile(r"error: (.+?): patch does not apply"),
    re.compile(r"error: (.+?): No such file or directory"),
    re.compile(r"error: (.+?): already exists in working directory"),
    re.compile(r"error: (.+?): does not exist in index"),
)


def _failed_files(stderr: str) -> list[str]:
    files: list[str] = []
    for pat in _FILE_PATTERNS:
        for m in pat.finditer(stderr):
            if m.group(1) not in files:
                files.append(m.group(1))
    return files


def check_patch(tree: Path, patch: Patch) -> None:
    """Raise if ``patch`` would not apply cleanly to ``tree``."""
    fwd = _git_apply(tree, patch.path, "--check")
    if fwd.returncode == 0:
        return
    if _git_apply(tree, patch.path, "--check", "--reverse").returncode == 0:
        raise AlreadyAppliedError(f"patch {patch.name} is already applied to {tree}")
    raise PatchError(patch.name, _failed_files(fwd.stderr), fwd.stderr)


def read_stamp(tree: Path) -> list[str]:
    f = Path(tree) / STAMP
    return f.read_text().split() if f.exists() else []


def apply_series(tree: Path, patches: list[Patch], cuda: list[Path] = (),
                 cuda_root: Path | None = None, log=None) -> None:
    """Copy cuda/ sources and apply the series to a pristine tree, in order.

    Each patch is checked before it is applied, so a failure leaves the tree
    as the previous patch left it and names the patch and file at fault.
    """
    tree = Path(tree)
    done = read_stamp(tree)
    if done:
        raise AlreadyAppliedError(
            f"{tree} is already patched (series: {' '.join(done)}); start from a fresh sdist")
    dest = tree / pinned.CUDA_DEST
    for f in cuda:
        rel = f.relative_to(cuda_root) if cuda_root else Path(f.name)
        target = dest / rel
        if target.exists():
            raise PatchError("cuda/", [str(rel)], f"{target} already exists in the pinned tree")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    for p in patches:
        check_patch(tree, p)
        r = _git_apply(tree, p.path)
        if r.returncode != 0:  # --check passed, so this is unexpected
            raise PatchError(p.name, _failed_files(r.stderr), r.stderr)
        if log:
            log(f"applied {p.name}")
    (tree / STAMP).write_text("".join(f"{p.name}\n" for p in patches))
