"""The patched llama-server on loopback: start, wait for health, talk HTTP, stop.

Used by the server tests and by scripts/server_load.py. Everything goes through
the real binary and real HTTP (http.client), nothing is mocked.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

from . import tools

_KV = re.compile(r"llama_kv_cache: size = +([0-9.]+) MiB")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


class Server:
    """``llama-server -m MODEL ARGS...`` on 127.0.0.1; a context manager."""

    def __init__(self, model: Path, *args: str, log: Path, threads: int = 2, env: dict | None = None,
                 start_timeout: float = 120):
        self.model, self.args, self.log_path = Path(model), [str(a) for a in args], Path(log)
        self.threads, self.start_timeout = threads, start_timeout
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def cmd(self) -> list[str]:
        return [str(tools.tool("llama-server")), "-m", str(self.model), "--host", "127.0.0.1",
                "--port", str(self.port), "-t", str(self.threads), "--no-webui", *self.args]

    def start(self) -> "Server":
        self._logf = self.log_path.open("w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._logf, stderr=subprocess.STDOUT, env=self.env)
        t0 = time.time()
        while time.time() - t0 < self.start_timeout:
            if self.proc.poll() is not None:
                raise ServerError(f"llama-server exited with {self.proc.returncode} at start:\n{self.tail()}")
            try:
                st, _ = self.request("GET", "/health", timeout=2)
                if st == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"llama-server not healthy after {self.start_timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- HTTP -------------------------------------------------------------------------

    def request(self, method: str, path: str, body=None, timeout: float = 300,
                raw: bytes | None = None) -> tuple[int, dict | str]:
        """One request; returns (status, parsed JSON or text)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            r = c.getresponse()
            text = r.read().decode(errors="replace")
        finally:
            c.close()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text

    def post(self, path: str, body=None, **kw) -> tuple[int, dict | str]:
        return self.request("POST", path, body, **kw)

    def ok(self, path: str, body=None, **kw) -> dict:
        st, res = self.post(path, body, **kw)
        if st != 200:
            raise ServerError(f"POST {path}: HTTP {st}: {res}")
        return res

    # --- what the server said -------------------------------------------------------------

    def log_text(self) -> str:
        self._logf.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def kv_mib(self) -> float | None:
        """The KV cache size llama.cpp allocated (sum over caches, e.g. SWA + full)."""
        sizes = [float(m.group(1)) for m in _KV.finditer(self.log_text())]
        return sum(sizes) if sizes else None

    def peak_rss_mib(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None
