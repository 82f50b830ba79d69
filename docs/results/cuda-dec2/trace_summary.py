"""Summaries of TQTRACE lines (TQ_FA_TURBO_PROBE=trace): per launch of 1056 warps (264 blocks x 4), the
span, and medians and extremes of each warp's start, prologue, tile loop, epilogue and end (us); per-head loop medians."""
import sys, collections, statistics as st
for f in sys.argv[1:]:
    rows=[l.split() for l in open(f) if l.startswith("TQTRACE")]
    rows=[(int(a[1]),int(a[2]),int(a[3]),int(a[4]),int(a[5]),int(a[6]),int(a[7]),int(a[8]),int(a[9])) for a in rows]
    # group into launches: 1056 lines each (264 blocks x 4 warps)
    n=1056
    print(f, len(rows)//n, "launches")
    for li in range(len(rows)//n):
        R=rows[li*n:(li+1)*n]
        t0=min(r[4] for r in R)
        end=max(r[7] for r in R)
        starts=[r[4]-t0 for r in R]; pro=[r[5]-r[4] for r in R]; loop=[r[6]-r[5] for r in R]; epi=[r[7]-r[6] for r in R]
        ends=[r[7]-t0 for r in R]
        # per SM busy: from min start to max end of its blocks
        sm=collections.defaultdict(list)
        for r in R: sm[r[0]].append(r)
        busy=[max(x[7] for x in v)-min(x[4] for x in v) for v in sm.values()]
        nt=collections.Counter(r[8] for r in R)
        def q(x): x=sorted(x); return f"min {x[0]/1e3:.1f} med {x[len(x)//2]/1e3:.1f} max {x[-1]/1e3:.1f}"
        print(f" launch {li}: span {(end-t0)/1e3:.1f} us; start {q(starts)}; prologue {q(pro)}; loop {q(loop)}; epi {q(epi)}; end {q(ends)}; SM busy mean {st.mean(busy)/1e3:.1f} over {len(sm)} SMs; tiles {dict(nt)}")
        if li==1:
            # loop time vs tiles
            for k in sorted(nt):
                L=[r[6]-r[5] for r in R if r[8]==k]
                print(f"   tiles {k}: loop {q(L)} n={len(L)}")
            # per-block: loop by head z
            byz=collections.defaultdict(list)
            for r in R: byz[r[2]].append(r[6]-r[5])
            print("   loop med by head:", [round(st.median(byz[z])/1e3,1) for z in sorted(byz)])
            # SM with 1 vs 2 blocks
            nb=collections.Counter(len(set((x[1],x[2]) for x in v)) for v in sm.values())
            print("   blocks per SM:", dict(nb))
