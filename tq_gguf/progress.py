"""Stage headers, elapsed times and a compiler progress line.

Long output goes to a log file; the terminal gets one line per stage and a
progress line for the compile (in place on a terminal, every few percent in
a CI log).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path


class StageError(RuntimeError):
    """A build stage failed; the message names its log."""


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


class Stages:
    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.n, self.stream = total, 0, stream
        self.t0 = time.monotonic()

    def start(self, name: str) -> "Stage":
        self.n += 1
        return Stage(self, name)

    def elapsed(self) -> str:
        return _fmt(time.monotonic() - self.t0)


class Stage:
    def __init__(self, stages: Stages, name: str):
        self.stages, self.name = stages, name
        self.t0 = time.monotonic()
        self.say(f"[{stages.n}/{stages.total}] {name} ...")

    def say(self, msg: str) -> None:
        print(msg, file=self.stages.stream, flush=True)

    def log(self, msg: str) -> None:
        self.say(f"      {msg}")

    def done(self, result: str = "done") -> None:
        self.say(f"      {result} ({_fmt(time.monotonic() - self.t0)}, total {self.stages.elapsed()})")


_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")


def run_logged(cmd: list[str], log_path: Path, stage: Stage | None = None, env=None,
               cwd=None, ninja_progress: bool = False) -> str:
    """Run ``cmd`` with all output to ``log_path``; raise StageError with its tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=25)
    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    last_pct, last_t = -100, 0.0
    with open(log_path, "w", buffering=1) as log:
        log.write("$ " + " ".join(map(str, cmd)) + "\n")
        log.flush()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env, cwd=cwd, errors="replace")
        assert p.stdout is not None
        for line in p.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            m = _NINJA.match(line) if ninja_progress else None
            if m and stage is not None:
                i, n = int(m.group(1)), int(m.group(2))
                pct = 100 * i // max(n, 1)
                now = time.monotonic()
                if tty:
                    sys.stderr.write(f"\r      compiling {i}/{n} ({pct}%) {_fmt(now - stage.t0)}   ")
                    sys.stderr.flush()
                elif pct >= last_pct + 10 or now - last_t > 60:
                    stage.log(f"compiling {i}/{n} ({pct}%) {_fmt(now - stage.t0)}")
                    last_pct, last_t = pct, now
        rc = p.wait()
    if tty and ninja_progress:
        sys.stderr.write("\n")
    if rc != 0:
        shown = "\n".join("      | " + t for t in tail)
        raise StageError(f"command failed (exit {rc}): {' '.join(map(str, cmd[:3]))} ...\n"
                         f"{shown}\n      full log: {log_path}")
    return "\n".join(tail)
