"""Find and run the tools of the active build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from . import paths


class ToolNotBuilt(RuntimeError):
    pass


def active() -> dict:
    try:
        return json.loads(paths.active_file().read_text())
    except (OSError, ValueError):
        return {}


def bin_dir() -> Path | None:
    """``$TQ_GGUF_BIN`` or the bin/ of the last `tq-gguf build`."""
    env = os.environ.get("TQ_GGUF_BIN")
    if env:
        return Path(env)
    a = active()
    return Path(a["bin"]) if a.get("bin") else None


def tool(name: str) -> Path:
    d = bin_dir()
    p = d / name if d else None
    if p is None or not p.exists():
        found = shutil.which(name) if d is None else None
        if found and os.environ.get("TQ_GGUF_ALLOW_PATH_TOOLS"):
            return Path(found)
        raise ToolNotBuilt(f"{name} is not built (looked in {d or 'no active build'}); "
                           "run: tq-gguf build")
    return p


def run_tool(name: str, *args: str, timeout: float | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(tool(name)), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def tool_version(name: str) -> str:
    """The tq-gguf line of ``NAME --version`` (empty if the tool is unpatched)."""
    r = run_tool(name, "--version", timeout=60)
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("tq-gguf:"):
            return line.split(":", 1)[1].strip()
    return ""
