"""`tq-gguf bench community`: the standard suite, one submission file.

Steps (each saved to ``OUT.partial`` as it finishes, so an interrupted run
resumes where it stopped when started again with the same model, build and
settings): quality (all caches in one lock-step pass), speed per cache and
depth, needle retrieval per cache. Depths that do not fit the device are
recorded in ``speed_skipped`` with the reason, not dropped silently.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import caches as cachemod
from .schema import SUBMISSION


@dataclass
class Suite:
    caches: str = "f16,q8_0,q4_0,turbo3,turbo2,q8_0/turbo3"
    ctx: int = 2048
    chunks: int = 8
    depths: tuple[int, ...] = (0, 8192, 32768)
    prompt: int = 2048
    gen: int = 128
    reps: int = 3
    niah_lengths: tuple[int, ...] = (1024, 2048, 4096)
    niah_depths: tuple[float, ...] = (0.0, 0.5, 1.0)
    niah_trials: int = 2
    threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    n_gpu_layers: int = 99

    def settings(self) -> dict:
        d = asdict(self)
        return {"caches": d["caches"].split(","),
                "ppl": {"ctx": self.ctx, "chunks": self.chunks},
                "speed": {"depths": list(self.depths), "prompt": self.prompt, "gen": self.gen, "reps": self.reps},
                "niah": {"lengths": list(self.niah_lengths), "depths": list(self.niah_depths),
                         "trials": self.niah_trials},
                "threads": self.threads, "n_gpu_layers": self.n_gpu_layers, "flash_attn": True}


def hardware(n_gpu_layers: int) -> dict:
    from .report import system_info
    from .. import tools
    info = system_info(n_gpu_layers)
    backend = "cuda" if "cuda" in (tools.active().get("variant") or "") else "cpu"
    return {"cpu": info["cpu"], "cpu_count": info["cpu_count"], "gpu": info["gpu"] if backend != "cpu" else None,
            "backend": backend, "cuda": info.get("cuda") if backend == "cuda" else None, "os": info["os"]}


# relative cost of the steps for the ETA: a rough guess, refined by the steps already run
_WEIGHT = {"ppl": 3.0, "speed": 1.0, "niah": 1.5}


class Steps:
    """Finished steps in OUT.partial; a run with another key starts over."""

    def __init__(self, path: Path, key: dict):
        self.path, self.key = path, key
        self.done: dict = {}
        if path.exists():
            try:
                old = json.loads(path.read_text())
                if old.get("key") == key:
                    self.done = old["done"]
            except (OSError, ValueError, KeyError):
                pass

    def save(self, name: str, value) -> None:
        self.done[name] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": self.key, "done": self.done}))
        tmp.replace(self.path)


def run(model: Path, out: Path, suite: Suite, text: Path, log=print) -> dict:
    from . import niah, quality, report, speed
    from .. import build, runtime, tools
    cs = cachemod.parse(suite.caches)
    for base in (cachemod.Q8_0, cachemod.F16):
        if base not in cs:
            raise ValueError(f"the suite needs {base.name} among the caches: ratios are taken against it")
    _, _, series_sha = build.series_info()
    msha = report.file_sha256(model)
    tsha = report.file_sha256(text)
    key = {"model": msha, "text": tsha, "series": tools.active().get("tq_version"), "suite": suite.settings()}
    out.parent.mkdir(parents=True, exist_ok=True)
    steps = Steps(out.with_name(out.name + ".partial"), key)
    if steps.done:
        log(f"resuming: {len(steps.done)} steps already done ({', '.join(steps.done)})")
    plan = ["ppl"] + [f"speed:{c.name}" for c in cs] + [f"niah:{c.name}" for c in cs]
    total = sum(_WEIGHT[p.split(":")[0]] for p in plan)
    t0 = time.monotonic()
    done_w = 0.0
    ran_w = 0.0
    for i, step in enumerate(plan, 1):
        w = _WEIGHT[step.split(":")[0]]
        if step in steps.done:
            done_w += w
            continue
        el = time.monotonic() - t0
        eta = f", about {(el / ran_w) * (total - done_w) / 60:.0f} min left" if ran_w else ""
        log(f"[{i}/{len(plan)}] {step} (elapsed {el / 60:.1f} min{eta})")
        kind, _, name = step.partition(":")
        c = next((x for x in cs if x.name == name), None)
        if kind == "ppl":
            body = quality.run_ppl(model, text.read_text(), cs, ctx=suite.ctx, chunks=suite.chunks,
                                   threads=suite.threads, n_gpu_layers=suite.n_gpu_layers)
            value = {"results": body["results"], "reference": body["reference"],
                     "seconds": round(time.monotonic() - t0 - el, 1)}
        elif kind == "speed":
            args = (suite.prompt, suite.gen, suite.reps, suite.threads, suite.n_gpu_layers)
            rows, mem, skipped = [], [], []
            try:  # one context for every depth
                b = speed.run_speed(model, [c], list(suite.depths), *args)
                rows, mem = b["results"], b["memory"]
            except RuntimeError as e:  # the deepest did not fit: go up depth by depth
                log(f"  {str(e).splitlines()[0][:200]}; trying depth by depth")
                for d in sorted(suite.depths):
                    try:
                        b = speed.run_speed(model, [c], [d], *args)
                        rows += b["results"]
                        mem = b["memory"]  # the deepest context that fit
                    except RuntimeError as e:
                        skipped.append({"cache": c.name, "depth": d, "reason": str(e).splitlines()[0][:300]})
                        log(f"  depth {d} skipped: {skipped[-1]['reason']}")
                        break  # deeper ones will not fit either
            value = {"results": rows, "memory": mem, "skipped": skipped}
        else:
            b = niah.run_niah(model, text.read_text(), [c], list(suite.niah_lengths), list(suite.niah_depths),
                              trials=suite.niah_trials, threads=suite.threads, n_gpu_layers=suite.n_gpu_layers)
            value = {"results": b["results"]}
        steps.save(step, value)
        done_w += w
        ran_w += w
    d = steps.done
    spd = [r for c in cs for r in d[f"speed:{c.name}"]["results"]]
    speed.add_ratios(spd)
    m = runtime.Model(model, n_gpu_layers=0)
    try:
        desc, n_params = m.desc, int(m.n_params)
    finally:
        m.close()
    from .. import __version__
    doc = {
        "schema": SUBMISSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tq_gguf": {"version": __version__, "series": tools.active().get("tq_version"),
                    "series_sha256": series_sha, "variant": tools.active().get("variant")},
        "hardware": hardware(suite.n_gpu_layers),
        "model": {"file": model.name, "bytes": model.stat().st_size, "sha256": msha, "desc": desc,
                  "n_params": n_params},
        "text": {"file": text.name, "sha256": tsha},
        "settings": suite.settings(),
        "results": {"ppl": d["ppl"]["results"], "speed": spd,
                    "memory": [m for c in cs for m in d[f"speed:{c.name}"]["memory"]],
                    "niah": [r for c in cs for r in d[f"niah:{c.name}"]["results"]],
                    "speed_skipped": [s for c in cs for s in d[f"speed:{c.name}"]["skipped"]]},
        "timings": {"total_s": round(time.monotonic() - t0, 1)},
    }
    return doc
