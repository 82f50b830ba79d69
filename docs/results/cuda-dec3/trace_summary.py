"""Summaries of TQTRACE lines (TQ_FA_TURBO_PROBE=trace): launches split where a warp starts more than 5 us
after the previous one; per launch the span, medians and extremes of each warp's start, prologue, tile loop,
epilogue and end (us), tiles per warp, per-tile loop time by the block's dispatch rank on its SM, and
per SM the first start to last end. python trace_summary.py FILE[.gz]..."""
import sys, gzip, collections, statistics as st
for f in sys.argv[1:]:
    op = gzip.open if f.endswith(".gz") else open
    rows = [l.split() for l in op(f, "rt") if l.startswith("TQTRACE")]
    rows = sorted(tuple(int(x) for x in a[1:]) for a in rows)   # sm by bz warp t0 t1 t2 t3 tiles
    rows.sort(key=lambda r: r[4])
    launches, cur = [], []
    for r in rows:
        if cur and r[4] - cur[-1][4] > 5000:
            launches.append(cur); cur = []
        cur.append(r)
    launches.append(cur)
    print(f, len(launches), "launches of", [len(R) for R in launches], "warps")
    def q(x): x = sorted(x); return f"min {x[0]/1e3:.1f} med {x[len(x)//2]/1e3:.1f} max {x[-1]/1e3:.1f}"
    for li, R in enumerate(launches):
        t0 = min(r[4] for r in R); end = max(r[7] for r in R)
        sm = collections.defaultdict(list)
        for r in R: sm[r[0]].append(r)
        busy = [max(x[7] for x in v) - min(x[4] for x in v) for v in sm.values()]
        nt = collections.Counter(r[8] for r in R)
        print(f" launch {li}: span {(end-t0)/1e3:.1f} us; start {q([r[4]-t0 for r in R])}; prologue {q([r[5]-r[4] for r in R])}; "
              f"loop {q([r[6]-r[5] for r in R])}; epi {q([r[7]-r[6] for r in R])}; loop end {q([r[6]-t0 for r in R])}; "
              f"end {q([r[7]-t0 for r in R])}; SMs {len(sm)}, busy mean {st.mean(busy)/1e3:.1f}; tiles {dict(sorted(nt.items()))}")
        # per block: dispatch rank on its SM (by the block's first start), per-tile loop time
        rank = collections.defaultdict(list)
        for s, v in sm.items():
            blocks = collections.defaultdict(list)
            for r in v: blocks[(r[1], r[2])].append(r)
            order = sorted(blocks.values(), key=lambda b: min(r[4] for r in b))
            for k, b in enumerate(order):
                rank[k] += [(r[6]-r[5])/max(r[8], 1) for r in b]
        print("   per-tile loop time (us) by the block's rank on its SM:",
              {k: round(st.median(v)/1e3, 2) for k, v in sorted(rank.items())})
