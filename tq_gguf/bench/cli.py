"""`tq-gguf ppl | speed | niah`: argument handling and output files."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import caches as cachemod
from ..errors import UsageError


def _plot(a) -> int:
    import json
    from . import report
    for f in a.files:
        try:
            doc = json.loads(f.read_text())
            report.validate(doc)
        except (OSError, ValueError) as e:
            raise UsageError(f"{f}: not a tq-gguf bench result ({e})") from None
        except Exception as e:  # jsonschema.ValidationError
            raise UsageError(f"{f}: does not follow the bench schema: {getattr(e, 'message', e)}") from None
        out = report.plot(doc, f.with_suffix(".png"))
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _common(p: argparse.ArgumentParser, default_caches: str) -> None:
    p.add_argument("model", type=Path, help="GGUF model")
    p.add_argument("--cache", default=default_caches, metavar="K/V[,K/V...]",
                   help=f"cache types; a bare type means K and V (default {default_caches})")
    p.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, help="layers on the GPU (99: all)")
    p.add_argument("-o", "--out", type=Path, default=None,
                   help="output stem: writes STEM.json, STEM.md and STEM.png (default: tq-gguf-results/<kind>)")


def add_parsers(sub) -> None:
    p = sub.add_parser("ppl", help="perplexity and KL divergence vs an f16 cache, every cache type in one run")
    _common(p, "f16,q8_0,q4_0,turbo3,q8_0/turbo3,turbo2")
    p.add_argument("--text", type=Path, required=True, help="UTF-8 text file")
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--chunks", type=int, default=None, help="at most this many chunks (default: all)")
    p.add_argument("-b", "--batch", type=int, default=512)
    p.set_defaults(func=_ppl)

    s = sub.add_parser("speed", help="prefill/decode tokens/s at depth, ratios vs f16 and q8_0 from one run")
    _common(s, "f16,q8_0,q4_0,turbo3,turbo2,q8_0/turbo3")
    s.add_argument("--depths", default="0,8192,32768")
    s.add_argument("--prompt", type=int, default=2048)
    s.add_argument("--gen", type=int, default=128)
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--engine", choices=["bindings", "llama-bench", "both"], default="bindings",
                   help="through llama-cpp-python, the patched llama-bench, or both side by side")
    s.set_defaults(func=_speed)

    n = sub.add_parser("niah", help="needle-in-a-haystack retrieval accuracy per cache type")
    _common(n, "f16,q8_0,q4_0,turbo3,turbo2")
    n.add_argument("--text", type=Path, default=None, help="haystack text (default: the handbook text)")
    n.add_argument("--lengths", default="1024,2048,4096")
    n.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    n.add_argument("--trials", type=int, default=3)
    n.set_defaults(func=_niah)

    b = sub.add_parser("bench", help="standard suites")
    bsub = b.add_subparsers(dest="suite", required=True)
    c = bsub.add_parser("community", help="the community suite: quality, speed at depth, needles -> one "
                        "submission file (resumes after an interruption)")
    c.add_argument("model", type=Path)
    c.add_argument("-o", "--out", type=Path, required=True, help="submission file to write (JSON)")
    c.add_argument("--text", type=Path, default=None, help="standard: the handbook's held-out text")
    c.add_argument("--depths", default="0,8192,32768")
    c.add_argument("--ctx", type=int, default=2048)
    c.add_argument("--chunks", type=int, default=8)
    c.add_argument("--reps", type=int, default=3)
    c.add_argument("--prompt", type=int, default=2048)
    c.add_argument("--gen", type=int, default=128)
    c.add_argument("--niah-lengths", default="1024,2048,4096")
    c.add_argument("--niah-trials", type=int, default=2)
    c.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 2)
    c.add_argument("-ngl", "--n-gpu-layers", type=int, default=99)
    c.set_defaults(func=_community)

    v = sub.add_parser("submission", help="check submission files")
    v.add_argument("action", choices=["validate"])
    v.add_argument("files", type=Path, nargs="+")
    v.set_defaults(func=_validate)

    lb = sub.add_parser("leaderboard", help="aggregate the valid submissions of a folder into Markdown and plots")
    lb.add_argument("dir", type=Path)
    lb.add_argument("-o", "--out", type=Path, required=True, help="Markdown file to write")
    lb.add_argument("--plots", type=Path, default=None, help="folder for PNG plots")
    lb.set_defaults(func=_leaderboard)

    g = sub.add_parser("plot", help="draw the PNG of bench result JSON files (written next to them)")
    g.add_argument("files", type=Path, nargs="+")
    g.set_defaults(func=_plot)


def _ints(s: str, what: str) -> list[int]:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what}: expected comma-separated integers, got {s!r}") from None
    if not v or any(x < 0 for x in v):
        raise UsageError(f"{what}: expected non-negative integers, got {s!r}")
    return v


def _prepare(a) -> list[cachemod.Cache]:
    if not a.model.is_file():
        raise UsageError(f"no such model file: {a.model}")
    try:
        cs = cachemod.parse(a.cache)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        from .. import runtime
        runtime._lib()
    except ImportError as e:
        raise UsageError(f"the patched llama-cpp-python is not installed ({e}): run `tq-gguf build`") from None
    return cs


def _emit(doc: dict, a, kind: str) -> int:
    from . import report
    report.validate(doc)  # our own output must follow the schema we publish
    stem = a.out or Path("tq-gguf-results") / kind
    md = report.markdown(doc)
    print("\n" + md)
    report.write_json(doc, stem.with_suffix(".json"))
    stem.with_suffix(".md").write_text(md)
    written = [f"{stem}.json", f"{stem}.md"]
    try:
        written.append(str(report.plot(doc, stem.with_suffix(".png"))))
    except ImportError as e:  # a declared dependency; tolerated on bare GPU hosts
        print(f"plot skipped ({e}); `tq-gguf plot {stem}.json` draws it later", file=sys.stderr)
    print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read text {p}: {e}") from None


def _ppl(a) -> int:
    from . import quality, report
    cs = _prepare(a)
    try:
        body = quality.run_ppl(a.model, _read_text(a.text), cs, ctx=a.ctx, chunks=a.chunks, threads=a.threads,
                               n_gpu_layers=a.n_gpu_layers, n_batch=a.batch)
    except (ValueError, RuntimeError) as e:  # bad input, or llama.cpp refused (its log tail is in e)
        raise UsageError(str(e)) from None
    return _emit(report.envelope("ppl", a.model, body, text=a.text), a, "ppl")


def _speed(a) -> int:
    from . import report, speed
    cs = _prepare(a)
    for base in (cachemod.Q8_0, cachemod.F16):
        if base not in cs:
            cs.insert(0, base)
            print(f"speed: adding {base.name}: ratios are taken against it in the same run", file=sys.stderr)
    depths = _ints(a.depths, "--depths")
    try:
        body = {"settings": {}, "memory": [], "results": []}
        if a.engine in ("bindings", "both"):
            body = speed.run_speed(a.model, cs, depths, a.prompt, a.gen, a.reps, a.threads, a.n_gpu_layers)
        if a.engine in ("llama-bench", "both"):
            from .llamabench import run_llama_bench
            rows = run_llama_bench(a.model, cs, depths, a.prompt, a.gen, a.reps, a.threads, a.n_gpu_layers)
            body["results"] += rows
            body["settings"].update(depths=sorted(depths), prompt=a.prompt, gen=a.gen, reps=a.reps,
                                    threads=a.threads, n_gpu_layers=a.n_gpu_layers, flash_attn=True)
        body["settings"]["engine"] = a.engine
        speed.add_ratios(body["results"])
    except (ValueError, RuntimeError) as e:  # bad input, or llama.cpp refused (its log tail is in e)
        raise UsageError(str(e)) from None
    return _emit(report.envelope("speed", a.model, body), a, "speed")


def _niah(a) -> int:
    from . import niah, report
    cs = _prepare(a)
    text = a.text
    if text is None:
        from .. import assets
        text = assets.handbook_text(lambda m: print(m, file=sys.stderr))["test"]
    try:
        depths = [float(x) for x in a.depths.split(",")]
    except ValueError:
        raise UsageError(f"--depths: expected fractions like 0,0.5,1, got {a.depths!r}") from None
    try:
        body = niah.run_niah(a.model, _read_text(text), cs, _ints(a.lengths, "--lengths"), depths,
                             trials=a.trials, threads=a.threads, n_gpu_layers=a.n_gpu_layers)
    except (ValueError, RuntimeError) as e:  # bad input, or llama.cpp refused (its log tail is in e)
        raise UsageError(str(e)) from None
    return _emit(report.envelope("niah", a.model, body, text=text), a, "niah")


def _community(a) -> int:
    from . import community
    from .submission import Invalid, check
    if not a.model.is_file():
        raise UsageError(f"no such model file: {a.model}")
    text = a.text
    if text is None:
        from .. import assets
        text = assets.handbook_text(lambda m: print(m, file=sys.stderr))["test"]
    suite = community.Suite(ctx=a.ctx, chunks=a.chunks, depths=tuple(_ints(a.depths, "--depths")), reps=a.reps,
                            prompt=a.prompt, gen=a.gen,
                            niah_lengths=tuple(_ints(a.niah_lengths, "--niah-lengths")),
                            niah_trials=a.niah_trials, threads=a.threads, n_gpu_layers=a.n_gpu_layers)
    log = lambda m: print(f"community: {m}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        doc = community.run(a.model, a.out, suite, text, log=log)
        check(doc)  # what we write must pass what we ask of others
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from None
    except Invalid as e:
        raise UsageError(f"the result fails validation ({e}); nothing written") from None
    from .report import write_json
    write_json(doc, a.out)
    a.out.with_name(a.out.name + ".partial").unlink(missing_ok=True)
    print(f"wrote {a.out}: submit it by adding it to submissions/ (see docs/submitting.md)", file=sys.stderr)
    return 0


def _validate(a) -> int:
    from .submission import Invalid, load
    bad = 0
    for f in a.files:
        try:
            doc = load(f)
        except Invalid as e:
            bad += 1
            print(f"{f}: INVALID: {e}")
            continue
        print(f"{f}: ok ({doc['model']['file']}, {doc['hardware']['gpu']['name'] if doc['hardware']['gpu'] else 'CPU'}"
              f", {len(doc['results']['ppl'])} caches)")
    return 1 if bad else 0


def _leaderboard(a) -> int:
    from . import leaderboard
    if not a.dir.is_dir():
        raise UsageError(f"no such folder: {a.dir}")
    good, bad, dups = leaderboard.collect(a.dir)
    for f, why in bad:
        print(f"skipped {f}: {why}", file=sys.stderr)
    if not good:
        raise UsageError(f"no valid submission in {a.dir}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(leaderboard.markdown(a.dir, good, bad, dups))
    print(f"wrote {a.out} ({len(good)} submissions, {len(bad)} invalid, {len(dups)} duplicates)", file=sys.stderr)
    if a.plots:
        for p in leaderboard.plots(good, a.plots):
            print(f"wrote {p}", file=sys.stderr)
    return 0
