# per-kernel sums of the last decode token in an ncu CSV (ncu --metrics gpu__time_duration.sum --csv of llama-bench -p 0 -n 2)
import csv, gzip, sys, re, collections
def load(f):
    rows = []
    for r in csv.reader(l for l in gzip.open(f, 'rt') if l.startswith('"')):
        if r[0] == 'ID': continue
        rows.append((int(r[0]), r[4], r[7], r[8], float(r[14].replace(',', ''))))
    return rows
def short(n):
    n = re.sub(r'\(.*', '', n)
    n = re.sub(r'^void ', '', n)
    return n[:60]
for f in sys.argv[1:]:
    rows = load(f)
    # decode tokens: count flash attention launches (per token 32); take the last token's kernels
    fa = [i for i, r in enumerate(rows) if 'flash_attn' in r[1] and 'combine' not in r[1]]
    # split into tokens: token starts at the first kernel after a gap of layers: use rms_norm at layer 0 ... simpler: last 1/ntok of rows
    ntok = len(fa) // 32
    per = len(rows) // max(ntok, 1)
    last = rows[-per:]
    agg = collections.OrderedDict()
    for r in last:
        k = short(r[1]) + ' ' + r[2] + r[3]
        a = agg.setdefault(k, [0, 0.0])
        a[0] += 1; a[1] += r[4]
    tot = sum(a[1] for a in agg.values())
    print(f"== {f}: {len(rows)} kernels, {ntok} tokens?, last token {len(last)} kernels, sum {tot/1000:.1f} us")
    for k, a in sorted(agg.items(), key=lambda x: -x[1][1]):
        print(f"  {a[0]:4d} x {a[1]/a[0]/1000:7.2f} us = {a[1]/1000:8.1f} us  {k}")
