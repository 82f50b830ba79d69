"""JSON schemas of bench results (``tq-gguf.bench/1``) and community
submissions (``tq-gguf.submission/1``), one table of item shapes for both.

The published copies in docs/schema/ are generated from here:
``python -m tq_gguf.bench.schema docs/schema`` (a test keeps them in sync).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = "tq-gguf.bench/1"
SUBMISSION = "tq-gguf.submission/1"

_pos = {"type": "number", "minimum": 0}
_sha256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_name = {"type": "string", "minLength": 1, "maxLength": 200}

CACHE = {
    "cache": {"type": "string", "pattern": "^[a-z0-9_]+(/[a-z0-9_]+)?$"},
    "type_k": {"type": "string", "pattern": "^[a-z0-9_]+$"},
    "type_v": {"type": "string", "pattern": "^[a-z0-9_]+$"},
    "bpv": {"type": "number", "exclusiveMinimum": 0, "maximum": 32},
}

PPL_ITEM = {
    "type": "object",
    "required": ["cache", "type_k", "type_v", "bpv", "tokens", "kld", "kld_err", "kld_percentiles", "ppl",
                 "ppl_err", "ppl_ratio", "ppl_ratio_err", "same_top", "same_top_err", "kv_mib"],
    "properties": {
        **CACHE, "tokens": {"type": "integer", "minimum": 1}, "kld": _pos, "kld_err": _pos,
        "kld_percentiles": {"type": "object", "additionalProperties": _pos}, "kld_max": _pos,
        "ppl": {"type": "number", "exclusiveMinimum": 0}, "ppl_err": _pos,
        "ppl_ratio": {"type": "number", "exclusiveMinimum": 0}, "ppl_ratio_err": _pos,
        "same_top": {"type": "number", "minimum": 0, "maximum": 1}, "same_top_err": _pos,
        "kv_mib": {"type": ["number", "null"], "minimum": 0},
    },
}

SPEED_ITEM = {
    "type": "object",
    "required": ["engine", "cache", "bpv", "test", "n", "depth", "tok_s", "tok_s_sd", "vs_f16", "vs_q8_0"],
    "properties": {
        **CACHE, "engine": {"enum": ["bindings", "llama-bench"]},
        "test": {"type": "string", "pattern": "^(pp|tg)[0-9]+$"},
        "n": {"type": "integer", "minimum": 1}, "depth": {"type": "integer", "minimum": 0},
        "tok_s": {"type": "number", "exclusiveMinimum": 0}, "tok_s_sd": _pos,
        "samples": {"type": "array", "items": _pos},
        "vs_f16": {"type": ["number", "null"], "minimum": 0}, "vs_q8_0": {"type": ["number", "null"], "minimum": 0},
    },
}

MEMORY_ITEM = {"type": "object", "required": ["cache", "n_ctx", "kv_mib"],
               "properties": {"cache": CACHE["cache"], "n_ctx": {"type": "integer", "minimum": 1},
                              "kv_mib": {"type": ["number", "null"], "minimum": 0},
                              "kv_bytes_per_token_layer": {"type": ["number", "null"], "minimum": 0}}}

NIAH_ITEM = {
    "type": "object", "required": ["cache", "bpv", "length", "depth", "trials", "accuracy"],
    "properties": {**CACHE, "length": {"type": "integer", "minimum": 1},
                   "depth": {"type": "number", "minimum": 0, "maximum": 1},
                   "trials": {"type": "integer", "minimum": 1},
                   "accuracy": {"type": "number", "minimum": 0, "maximum": 1}},
}

_TQ = {"type": "object", "required": ["version", "series"],
       "properties": {"version": {"type": "string", "maxLength": 64},
                      "series": {"type": ["string", "null"], "pattern": "^[0-9][0-9a-z.]*\\+[0-9a-f]{12}$"},
                      "variant": {"type": ["string", "null"], "maxLength": 64}}}
_MODEL = {"type": "object", "required": ["file", "bytes", "sha256"],
          "properties": {"file": _name, "bytes": {"type": "integer", "minimum": 1}, "sha256": _sha256}}
_TEXT = {"type": "object", "required": ["file", "sha256"], "properties": {"file": _name, "sha256": _sha256}}
_GPU = {"type": ["object", "null"], "properties": {"name": _name, "memory": {"type": "string"},
                                                    "driver": {"type": "string"}}}
_SYSTEM = {"type": "object", "required": ["cpu", "cpu_count", "gpu"],
           "properties": {"cpu": {"type": "string"}, "cpu_count": {"type": "integer", "minimum": 0}, "gpu": _GPU}}
_CREATED = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z$"}


def _arr(item, min_items=1):
    return {"type": "array", "minItems": min_items, "items": item}


BENCH_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tq-gguf benchmark result (ppl, speed or niah)",
    "type": "object",
    "required": ["schema", "kind", "created", "tq_gguf", "command", "model", "system", "settings", "results"],
    "properties": {"schema": {"const": BENCH}, "kind": {"enum": ["ppl", "speed", "niah"]}, "created": _CREATED,
                   "tq_gguf": _TQ, "command": {"type": "string"}, "model": _MODEL, "text": _TEXT,
                   "system": _SYSTEM, "settings": {"type": "object"}},
    "allOf": [
        {"if": {"properties": {"kind": {"const": "ppl"}}},
         "then": {"required": ["reference", "text"],
                  "properties": {"settings": {"required": ["ctx", "chunks"]}, "results": _arr(PPL_ITEM)}}},
        {"if": {"properties": {"kind": {"const": "speed"}}},
         "then": {"required": ["memory"],
                  "properties": {"settings": {"required": ["depths", "prompt", "gen", "reps"]},
                                 "memory": _arr(MEMORY_ITEM, 0), "results": _arr(SPEED_ITEM)}}},
        {"if": {"properties": {"kind": {"const": "niah"}}},
         "then": {"required": ["summary", "text"],
                  "properties": {"settings": {"required": ["lengths", "depths", "trials"]},
                                 "results": _arr(NIAH_ITEM)}}},
    ],
}

SUBMISSION_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tq-gguf community benchmark submission",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema", "created", "tq_gguf", "hardware", "model", "text", "settings", "results"],
    "properties": {
        "schema": {"const": SUBMISSION}, "created": _CREATED,
        "tq_gguf": {**_TQ, "required": ["version", "series", "series_sha256"],
                    "properties": {**_TQ["properties"], "series_sha256": _sha256,
                                   "series": {"type": "string", "pattern": "^[0-9][0-9a-z.]*\\+[0-9a-f]{12}$"}}},
        "hardware": {"type": "object", "required": ["cpu", "cpu_count", "gpu", "backend"],
                     "properties": {"cpu": {"type": "string", "maxLength": 200},
                                    "cpu_count": {"type": "integer", "minimum": 1},
                                    "gpu": _GPU, "backend": {"enum": ["cpu", "cuda", "rocm", "metal", "vulkan"]},
                                    "cuda": {"type": ["string", "null"], "maxLength": 32},
                                    "os": {"type": "string", "maxLength": 200}}},
        "model": {**_MODEL, "properties": {**_MODEL["properties"], "desc": {"type": "string", "maxLength": 200},
                                           "n_params": {"type": "integer", "minimum": 1}}},
        "text": _TEXT,
        "settings": {"type": "object", "required": ["caches", "ppl", "speed", "niah"]},
        "results": {"type": "object", "required": ["ppl", "speed", "memory", "niah", "speed_skipped"],
                    "additionalProperties": False,
                    "properties": {"ppl": _arr(PPL_ITEM), "speed": _arr(SPEED_ITEM), "memory": _arr(MEMORY_ITEM),
                                   "niah": _arr(NIAH_ITEM, 0),
                                   "speed_skipped": _arr({"type": "object", "required": ["depth", "reason"]}, 0)}},
        "timings": {"type": "object", "additionalProperties": _pos},
    },
}

PUBLISHED = {"bench-1.json": BENCH_SCHEMA, "submission-1.json": SUBMISSION_SCHEMA}


def dumps(schema: dict) -> str:
    return json.dumps(schema, indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schema")
    out.mkdir(parents=True, exist_ok=True)
    for name, sch in PUBLISHED.items():
        (out / name).write_text(dumps(sch))
        print(out / name)
