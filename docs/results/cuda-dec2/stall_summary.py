"""Stall-reason shares from `ncu --import R --page source --csv --print-source sass` (cuda-dec2 runs 2, 3):
the whole launch, and the per-tile instructions (executed 7000-17000 times at depth 32768: 1056 warps x
7.76 tiles, twice that for the rolled chunks); 'once' = instructions executed at most 1100 times."""
import collections
import csv
import sys


def f(x):
    try:
        return float(x)
    except ValueError:
        return 0.0


for fn in sys.argv[1:]:
    rows = list(csv.reader(open(fn)))
    hdr, data = rows[1], rows[2:]
    cols = [i for i, h in enumerate(hdr) if h.startswith("stall_") and "Not Issued" not in h]
    tot = sum(f(r[2]) for r in data)
    tile = [r for r in data if 7000 <= f(r[5]) <= 17000]
    once = sum(f(r[2]) for r in data if 0 < f(r[5]) <= 1100)
    for name, rs in (("all", data), ("tile", tile)):
        n = sum(f(r[2]) for r in rs)
        agg = collections.Counter()
        for r in rs:
            for c in cols:
                agg[hdr[c][6:]] += f(r[c])
        extra = ""
        if name == "tile":
            a = [int(r[0], 16) for r in rs]
            extra = f" instructions {len(rs)}, code span {max(a) - min(a)} bytes,"
        print(f"{fn} {name}:{extra} samples {n:.0f} of {tot:.0f} (once-run instructions: {once:.0f});",
              {k: round(v / n, 3) for k, v in agg.most_common(9)})
