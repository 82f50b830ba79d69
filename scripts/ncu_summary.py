#!/usr/bin/env python3
"""Per-kernel totals from `ncu --metrics gpu__time_duration.sum --print-summary per-kernel` output.

    ncu --cache-control none --clock-control none --metrics gpu__time_duration.sum \
        --print-summary per-kernel llama-bench ... > ncu.txt
    python scripts/ncu_summary.py ncu.txt

Prints one line per kernel and launch grid (invocations, mean and total time, share),
largest total first, then the sum: where a run's GPU time goes (docs/results/cuda.md).
"""

from __future__ import annotations

import re
import sys

HEADER = re.compile(r"^\s+(?:void )?([A-Za-z_][\w:]*)(?:<.*?>)?\(.*\)\s+\(([\d, ]+)\)x\(([\d, ]+)\).*Invocations\s+(\d+)")
METRIC = re.compile(r"gpu__time_duration\.sum\s+(\w+)\s+([\d.,]+)\s+([\d.,]+)\s+([\d.,]+)")
UNIT_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}


def parse(lines) -> list[tuple[str, str, int, float]]:
    """(kernel, grid, invocations, mean µs) for each kernel/grid of the summary."""
    rows, cur = [], None
    for line in lines:
        m = HEADER.match(line)
        if m:
            cur = (m.group(1), m.group(2).replace(" ", ""), int(m.group(4)))
            continue
        m = METRIC.search(line)
        if m and cur is not None:
            if m.group(1) not in UNIT_US:
                raise ValueError(f"unknown time unit {m.group(1)!r} in: {line.strip()}")
            rows.append((*cur, float(m.group(4).replace(",", "")) * UNIT_US[m.group(1)]))
            cur = None
    return rows


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], errors="replace") as f:
        rows = parse(f)
    if not rows:
        print(f"error: no per-kernel gpu__time_duration.sum summary in {sys.argv[1]}", file=sys.stderr)
        return 1
    tot = sum(n * a for _, _, n, a in rows)
    for name, grid, n, a in sorted(rows, key=lambda r: -r[2] * r[3]):
        print(f"{name[:34]:34s} grid({grid}) n={n:5d} avg={a:8.2f}us total={n * a:10.1f}us {100 * n * a / tot:5.1f}%")
    print(f"TOTAL {tot:.1f} us over {sum(r[2] for r in rows)} launches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
