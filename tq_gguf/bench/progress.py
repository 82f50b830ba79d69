"""Progress bars (tqdm) on stderr; quiet when TQ_GGUF_QUIET=1."""

from __future__ import annotations

import os
import sys


def bar(total: int, desc: str, unit: str = "it", enabled: bool = True):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=not enabled or os.environ.get("TQ_GGUF_QUIET") == "1", mininterval=0.5)
