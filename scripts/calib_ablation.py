#!/usr/bin/env python3
"""What each part of the calibration contributes: capture once, fit variants, measure
held-out KLD (turbo3, turbo2) through the runtime, one line per variant.

    python scripts/calib_ablation.py MODEL --calib-text FILE --heldout FILE [--capture-ctx 2048]
        [--tokens 16384] [--ctx 2048] [--chunks 4] [--variants "default;whiten,rotate,0.1875,1;..."]

A variant is K_KIND,V_KIND,ALPHA,SINK[,pos] (fit.K_KINDS, fit.V_KINDS, the exponent, 0/1,
and `pos` for the positional key offset); "default" measures the uncalibrated rotation and
upstream q4_0.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tq_gguf import bindings  # noqa: E402

bindings.load_first()

from tq_gguf import runtime  # noqa: E402
from tq_gguf.bench.caches import Cache  # noqa: E402
from tq_gguf.calib import fit, ropepos  # noqa: E402
from tq_gguf.calib.calibrate import Evaluator, model_info, windows  # noqa: E402
from tq_gguf.calib.capture import Capture  # noqa: E402
from tq_gguf.calib.schema import Calibration  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--calib-text", type=Path, required=True)
    ap.add_argument("--heldout", type=Path, required=True)
    ap.add_argument("--capture-ctx", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--variants", default="default;whiten,rotate,0.1875,1;whiten,rotate,0.1875,0;whiten,rotate,0.125,1")
    a = ap.parse_args()
    info = model_info(a.model)
    m = runtime.Model(a.model)
    stream = m.tokenize(a.calib_text.read_text(errors="replace"), add_bos=False)
    seqs = windows(m, stream, a.tokens, a.capture_ctx, str(a.calib_text))
    rope, why = ropepos.from_gguf(a.model, info["n_layer"], info["d_k"])
    if rope is None:
        print(f"no positional offset for this model: {why}", flush=True)
    cap = Capture(m, n_ctx=a.capture_ctx, threads=a.threads, rope=rope)
    stats = cap.run(seqs)
    cap.close()
    m.close()
    n = info["n_layer"]
    print(f"{a.model.name}: {len(seqs)} windows of {a.capture_ctx}; position 0 repeatable in "
          f"{sum(fit.sink_vector(stats[i].sink_k) is not None for i in stats)} of {len(stats)} layers", flush=True)
    import tempfile
    with tempfile.TemporaryDirectory() as wd:
        ev = Evaluator(a.model, a.heldout.read_text(errors="replace"), a.ctx, a.chunks, a.threads, Path(wd))
        caches = [Cache("turbo3", "turbo3"), Cache("turbo2", "turbo2")]
        for v in a.variants.split(";"):
            t0 = time.time()
            if v == "default":
                r = ev.run(None, caches + [Cache("q4_0", "q4_0")])
            else:
                kk, vk, alpha, sink, *more = v.split(",")
                r = ev.run(Calibration(info["arch"], n, fit.fit(stats, n, kk, vk, sink=sink == "1", alpha=float(alpha),
                                                                pos="pos" in more)), caches)
            print(f"{v:28s} " + "  ".join(f"{k} {x['kld']:.4f}" for k, x in r.items()) + f"  ({time.time() - t0:.0f} s)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
