"""`tq-gguf convert`: Hugging Face checkpoint -> (quantized, calibrated) GGUF.

1. Check the input before any work: config, architecture, safetensors files
   (every shard of a sharded checkpoint present and readable), tokenizer, and
   disk space for the temporary and final files.
2. Convert with the converter that ships in the pinned llama.cpp tree
   (``convert_hf_to_gguf.py`` with its own gguf-py), in a subprocess.
3. Quantize with the patched ``llama-quantize`` when ``--outtype`` is a
   llama-quantize type.
4. ``--calibrate``: `tq-gguf calibrate` on the converted file (calib/).
5. Everything is written in a temporary folder beside OUT and renamed onto OUT
   at the end: an error or interrupt never leaves a half-written OUT.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from . import paths, pinned, tools
from .errors import UsageError


@dataclass(frozen=True)
class Arch:
    gguf: str                  # llama.cpp architecture the converter writes
    interleave: bool = False   # converter permutes Q/K rows (rope "normal"): HF pair (i, i+d/2) -> (2i, 2i+1)
    q_prescaled: bool = False  # llama.cpp scales Q before attention (HF passes the scale instead)


# HF `architectures[0]` -> what the converter makes of it. Each is verified end to end in
# tests/test_convert.py (tiny random checkpoint: convert, logits vs transformers, calibrate,
# llama-perplexity with turbo3, and HF-space capture == GGUF capture).
ARCHS = {
    "LlamaForCausalLM": Arch("llama", interleave=True),
    "MistralForCausalLM": Arch("llama", interleave=True),
    "Qwen2ForCausalLM": Arch("qwen2"),
    "Qwen3ForCausalLM": Arch("qwen3"),
    "Gemma3ForCausalLM": Arch("gemma3", q_prescaled=True),
}

# --outtype values the converter writes itself, and those llama-quantize makes from its output
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZE_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
                  "q5_k_s", "q5_k_m", "q6_k", "iq4_nl", "iq4_xs")
# bytes per weight of each output type (disk-space estimate; norms and small tensors stay f32)
BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                    "q5_0": 22 / 32, "q5_1": 24 / 32, "q2_k": 0.33, "q3_k_s": 0.43, "q3_k_m": 0.49,
                    "q3_k_l": 0.53, "q4_k_s": 0.57, "q4_k_m": 0.61, "q5_k_s": 0.69, "q5_k_m": 0.71,
                    "q6_k": 0.82, "iq4_nl": 0.5625, "iq4_xs": 0.53}


@dataclass
class Checkpoint:
    """What check_input found in a Hugging Face model folder."""
    path: Path
    hf_arch: str
    arch: Arch
    shards: list[Path]
    n_params: int


def _safetensors_header(f: Path) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON)."""
    try:
        size = f.stat().st_size
        with f.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n <= 1 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit in {size} bytes")
            head = json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        raise UsageError(f"{f}: not a readable safetensors file ({e})") from None
    end = 0
    for name, t in head.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(t["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise UsageError(f"{f}: tensor '{name}' has no valid data_offsets") from None
    if 8 + n + end > size:
        raise UsageError(f"{f}: truncated ({size} bytes; its header describes {8 + n + end})")
    return head


def check_input(hf_dir: Path, out: Path, outtype: str, calibrate: bool = False) -> Checkpoint:
    """Every check that can fail before work starts, each with a message that says what to do."""
    hf_dir, out = Path(hf_dir), Path(out)
    if not hf_dir.is_dir():
        raise UsageError(f"{hf_dir}: not a folder (expected a Hugging Face model folder with config.json)")
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise UsageError(f"{hf_dir}: config.json is missing; is this a Hugging Face model folder?")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{cfg_path}: not valid JSON ({e})") from None
    archs = config.get("architectures") or []
    hf_arch = archs[0] if archs else None
    if hf_arch not in ARCHS:
        raise UsageError(f"{cfg_path}: architecture {hf_arch!r} is not supported by tq-gguf convert "
                         f"(supported: {', '.join(ARCHS)})")
    if outtype not in CONVERTER_TYPES + QUANTIZE_TYPES:
        raise UsageError(f"--outtype {outtype!r}: choose one of {', '.join(CONVERTER_TYPES + QUANTIZE_TYPES)}")

    index = hf_dir / "model.safetensors.index.json"
    single = hf_dir / "model.safetensors"
    if index.is_file():
        try:
            wmap = json.loads(index.read_text())["weight_map"]
            assert isinstance(wmap, dict) and wmap
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise UsageError(f"{index}: not a valid safetensors index (no weight_map)") from None
        names = sorted(set(wmap.values()))
        missing = [n for n in names if not (hf_dir / n).is_file()]
        if missing:
            raise UsageError(f"{hf_dir}: sharded checkpoint is incomplete: {len(missing)} of {len(names)} shards "
                             f"missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        shards = [hf_dir / n for n in names]
    elif single.is_file():
        shards, wmap = [single], None
    else:
        bins = sorted(p.name for p in hf_dir.glob("*.bin"))
        hint = f" (found {', '.join(bins[:2])}: re-save with save_pretrained(..., safe_serialization=True))" \
            if bins else ""
        raise UsageError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json{hint}")

    n_params = 0
    held: dict[str, str] = {}
    for s in shards:
        head = _safetensors_header(s)
        for name, t in head.items():
            if name == "__metadata__":
                continue
            n = 1
            for x in t.get("shape", []):
                n *= int(x)
            n_params += n
            held[name] = s.name
    if wmap is not None:
        wrong = [k for k, v in wmap.items() if held.get(k) != v]
        if wrong:
            raise UsageError(f"{index}: {len(wrong)} tensors are not in the shard the index names "
                             f"(e.g. {wrong[0]} -> {wmap[wrong[0]]})")

    if not ((hf_dir / "tokenizer.model").is_file() or (hf_dir / "tokenizer.json").is_file()):
        raise UsageError(f"{hf_dir}: no tokenizer (tokenizer.model or tokenizer.json); the GGUF needs its vocabulary")

    if not out.parent.is_dir():
        raise UsageError(f"{out.parent}: output folder does not exist")
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; give the output file's name (-o OUT.gguf)")
    need = disk_needed(n_params, outtype, calibrate)
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise UsageError(f"{out.parent}: {free / 2**30:.2f} GiB free, converting needs about {need / 2**30:.2f} GiB "
                         f"({n_params / 1e6:.0f} M weights as {outtype}"
                         f"{' plus the 16-bit intermediate' if outtype in QUANTIZE_TYPES else ''}"
                         f"{' plus the calibrated copy' if calibrate else ''})")
    return Checkpoint(hf_dir, hf_arch, ARCHS[hf_arch], shards, n_params)


def disk_needed(n_params: int, outtype: str, calibrate: bool) -> int:
    """Peak bytes in OUT's folder: the converted file, the quantized one, the calibrated copy."""
    final = n_params * BYTES_PER_WEIGHT[outtype]
    peak = final
    if outtype in QUANTIZE_TYPES:
        peak += n_params * 2.0  # 16-bit intermediate lives until quantization ends
    if calibrate:
        peak = max(peak, 2 * final)  # quantized file and its calibrated copy
    return int(peak * 1.05) + (64 << 20)


REQUIREMENTS = ("torch", "transformers", "safetensors", "sentencepiece")


def missing_requirements() -> list[str]:
    import importlib.util
    return [m for m in REQUIREMENTS if importlib.util.find_spec(m) is None]


def converter() -> Path:
    """convert_hf_to_gguf.py of the pinned tree that `tq-gguf build` prepared."""
    missing = missing_requirements()
    if missing:
        raise UsageError(f"the converter needs {', '.join(missing)}: pip install -e '.[hf]' "
                         "(the CPU build of torch is enough)")
    p = paths.src_dir() / pinned.VENDOR_DIR / "convert_hf_to_gguf.py"
    if not p.is_file():
        raise UsageError(f"{p} is missing: run `tq-gguf build` first (the converter ships in the pinned llama.cpp)")
    return p


def _run_logged(cmd: list[str], what: str, log, env=None) -> None:
    """Run a command, relay its output as it comes, and on failure raise with its last lines."""
    tail: deque[str] = deque(maxlen=15)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            errors="replace", bufsize=1)
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line.split("\r")[-1])
            log(line)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        raise UsageError(f"{what} failed (exit {rc}):\n  " + "\n  ".join(tail))


def run(hf_dir: Path, out: Path, outtype: str = "f16", calibrate: bool = False, calib=None,
        hf_capture: bool = False, threads: int | None = None, verbose: bool = True) -> Path:
    """Convert ``hf_dir`` to ``out``; ``calib`` is a calibrate.Settings (used with ``calibrate``)."""
    t0 = time.time()
    out = Path(out).absolute()
    ck = check_input(hf_dir, out, outtype, calibrate)
    conv = converter()
    threads = threads or os.cpu_count() or 2
    quiet = not verbose or os.environ.get("TQ_GGUF_QUIET")

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    def stage(msg: str) -> None:
        print(f"convert: {msg}", file=sys.stderr, flush=True)

    stage(f"{ck.path} ({ck.hf_arch} -> {ck.arch.gguf}, {ck.n_params / 1e6:.1f} M weights in "
          f"{len(ck.shards)} file(s)) -> {out.name} as {outtype}{', calibrated' if calibrate else ''}")
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        conv_type = outtype if outtype in CONVERTER_TYPES else "auto"
        base = work / "converted.gguf"
        stage(f"convert_hf_to_gguf.py --outtype {conv_type}")
        env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
        _run_logged([sys.executable, str(conv), str(ck.path), "--outfile", str(base), "--outtype", conv_type],
                    "convert_hf_to_gguf.py", log, env=env)
        if not base.is_file():
            raise UsageError(f"convert_hf_to_gguf.py wrote no {base.name}")
        cur = base
        if outtype in QUANTIZE_TYPES:
            q = work / f"{outtype}.gguf"
            stage(f"llama-quantize {outtype.upper()}")
            _run_logged([str(tools.tool("llama-quantize")), str(base), str(q), outtype.upper(), str(threads)],
                        "llama-quantize", log)
            base.unlink()
            cur = q
        if calibrate:
            from .bindings import load_first
            load_first()
            from .calib.calibrate import Settings, run as calib_run
            from .calib.schema import CalibError
            st = calib or Settings()
            if hf_capture:
                st.hf_dir, st.hf_arch = ck.path, ck.arch
            stage(f"calibrate ({'statistics from the HF checkpoint' if hf_capture else 'statistics from the GGUF'})")
            cal = work / "calibrated.gguf"
            try:
                calib_run(cur, cal, st)
            except CalibError as e:
                raise UsageError(f"calibration: {e}") from None
            cur.unlink()
            cur = cal
        os.replace(cur, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stage(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) in {time.time() - t0:.0f} s")
    return out
