"""Checking community submissions: never executed, never rendered as HTML.

A file is read only if it is small, parsed as plain JSON (NaN/Infinity
refused), checked against the submission schema, then for sanity: numbers
in range, depths consistent with the settings, hashes well formed, and no
markup or control characters in any string (the leaderboard is Markdown that
people view in a browser).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

MAX_BYTES = 2 * 1024 * 1024
_MARKUP = re.compile(r"<\s*[a-zA-Z/!?]|javascript:|data:text/html|\]\(|&#|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]",
                     re.IGNORECASE)
MAX_TOK_S = 1e7


class Invalid(ValueError):
    """A submission that must not be used; the message says why."""


def _no_nan(token: str):
    raise Invalid(f"non-finite number {token} in the JSON")


def load(path: Path) -> dict:
    """The parsed submission, or Invalid with the first reason found."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise Invalid(f"cannot read: {e.strerror}") from None
    if not path.is_file():
        raise Invalid("not a regular file")
    if size > MAX_BYTES:
        raise Invalid(f"{size} bytes: larger than the {MAX_BYTES} bytes a submission may have")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("not UTF-8 text") from None
    try:
        doc = json.loads(text, parse_constant=_no_nan)
    except json.JSONDecodeError as e:
        raise Invalid(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    check(doc)
    return doc


def _strings(x, where="$"):
    if isinstance(x, str):
        yield where, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield f"{where}.{k} (key)", str(k)
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _strings(v, f"{where}[{i}]")


def _numbers(x, where="$"):
    if isinstance(x, bool):
        return
    if isinstance(x, (int, float)):
        yield where, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _numbers(v, f"{where}[{i}]")


def check(doc) -> None:
    import jsonschema
    from .schema import SUBMISSION, SUBMISSION_SCHEMA
    if not isinstance(doc, dict):
        raise Invalid(f"top level is a JSON {type(doc).__name__}, not an object")
    if doc.get("schema") != SUBMISSION:
        raise Invalid(f"schema is {str(doc.get('schema'))[:40]!r}, expected {SUBMISSION!r}")
    for where, s in _strings(doc):
        if _MARKUP.search(s):
            raise Invalid(f"{where}: markup or control characters are not allowed in a submission")
        if len(s) > 1000:
            raise Invalid(f"{where}: string of {len(s)} characters")
    for where, v in _numbers(doc):
        if not math.isfinite(v):
            raise Invalid(f"{where}: {v} is not finite")
    try:
        jsonschema.validate(doc, SUBMISSION_SCHEMA)
    except jsonschema.ValidationError as e:
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        raise Invalid(f"{path}: {e.message[:200]}") from None
    tq = doc["tq_gguf"]
    if tq["series"].rsplit("+", 1)[-1] != tq["series_sha256"][:12]:
        raise Invalid(f"tq_gguf.series {tq['series']!r} does not match series_sha256 {tq['series_sha256'][:12]}…")
    r, st = doc["results"], doc["settings"]
    for x in r["speed"]:
        if x["tok_s"] > MAX_TOK_S:
            raise Invalid(f"speed {x['cache']} {x['test']} depth {x['depth']}: {x['tok_s']} tok/s is not plausible")
    want = set(st["speed"]["depths"]) if isinstance(st.get("speed"), dict) else set()
    got = {x["depth"] for x in r["speed"]}
    if not got <= want:
        raise Invalid(f"speed depths {sorted(got - want)} are not in settings.speed.depths {sorted(want)}")
    for c in sorted({x["cache"] for x in r["speed"]}):
        have = {x["depth"] for x in r["speed"] if x["cache"] == c}
        first_skip = min((x["depth"] for x in r["speed_skipped"] if x.get("cache") == c), default=math.inf)
        missing = sorted(d for d in want if d not in have and d < first_skip)
        if missing:  # a depth that did not fit ends the series; any other gap is an error
            raise Invalid(f"speed for {c}: depths {missing} neither measured nor skipped for lack of memory")
    caches = [c for c in st.get("caches", []) if isinstance(c, str)]
    for part in ("ppl", "speed"):
        names = {x["cache"] for x in r[part]}
        if caches and not set(caches) <= names:
            raise Invalid(f"results.{part} lacks caches {sorted(set(caches) - names)} listed in settings.caches")
    for x in r["ppl"]:
        if x["cache"] == "f16" and x["kld"] > 1e-6:
            raise Invalid(f"results.ppl: f16 against the f16 reference has KLD {x['kld']}, expected 0")


def content_hash(doc: dict) -> str:
    """Identity of a submission for de-duplication: canonical JSON without the creation time."""
    body = {k: v for k, v in doc.items() if k != "created"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
