import csv, collections, sys
def f(x):
    try: return float(x)
    except: return 0.0
for fn in sys.argv[1:]:
    rows=list(csv.reader(open(fn)))
    hdr=rows[1]; data=rows[2:]
    cols=list(range(31,49))
    tot=sum(f(r[2]) for r in data)
    agg=collections.Counter()
    for r in data:
        for c in cols: agg[hdr[c]]+=f(r[c])
    exs=collections.Counter(int(f(r[5])) for r in data)
    tile_ex = max((e for e in exs if e>2000), key=lambda e: exs[e])
    tile=[r for r in data if abs(f(r[5])-tile_ex)<600 and f(r[5])>2000]
    tt=sum(f(r[2]) for r in tile); ta=collections.Counter()
    for r in tile:
        for c in cols: ta[hdr[c]]+=f(r[c])
    once=sum(f(r[2]) for r in data if 0<f(r[5])<=1100)
    addrs=[int(r[0],16) for r in tile]
    print(fn, "samples", tot, "instr", len(data), "| tile ex", tile_ex, "n", len(tile), "span", max(addrs)-min(addrs), "tile samples", tt, "once-samples", once)
    print("  all :", {k[6:]: round(v/tot,3) for k,v in agg.most_common(7)})
    print("  tile:", {k[6:]: round(v/tt,3) for k,v in ta.most_common(7)})
