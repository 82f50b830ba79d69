"""`tq-gguf niah`: needle-in-a-haystack retrieval per cache type.

A sentence carrying a random 6-digit number is put into real text at a
fraction of its length; the model is asked for the number and answers
greedily. A trial passes when the number appears in the first ``answer``
tokens. The haystack before the needle is decoded once per (length, depth)
and kept across trials (llama_memory_seq_rm removes only what follows it).
"""

from __future__ import annotations

import numpy as np

from .caches import Cache
from .progress import bar
from .. import runtime

NEEDLE = " The secret number is {n}. Remember it: {n}. "
QUESTION = "\n\nQuestion: what is the secret number mentioned in the text above?\nAnswer: The secret number is"


def _greedy(s: runtime.Session, model: runtime.Model, logits: np.ndarray, pos: int, n: int) -> str:
    out = []
    tok = int(np.argmax(logits[-1]))
    for i in range(n):
        if model.is_eog(tok):
            break
        out.append(model.piece(tok))
        if i + 1 < n:
            tok = int(np.argmax(s.eval([tok], pos + i)[-1]))
    return "".join(out)


def run_niah(model_path, haystack: str, caches: list[Cache], lengths: list[int], depths: list[float],
             trials: int = 3, answer: int = 8, threads: int = 2, n_gpu_layers: int = 0, n_batch: int = 512,
             seed: int = 7) -> dict:
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError("needle depths are fractions in [0, 1]")
    model = runtime.Model(model_path, n_gpu_layers=n_gpu_layers)
    try:
        hay = model.tokenize(haystack, add_bos=False)
        q = model.tokenize(QUESTION, add_bos=False)
        rng = np.random.default_rng(seed)
        numbers = [[[int(rng.integers(100000, 1000000)) for _ in range(trials)] for _ in depths] for _ in lengths]
        needles = [[[model.tokenize(NEEDLE.format(n=n), add_bos=False) for n in row] for row in per_len]
                   for per_len in numbers]
        n_ctx = (max(lengths) + answer + 255) // 256 * 256
        need = max(lengths)
        if len(hay) < need:
            raise ValueError(f"the haystack text has {len(hay)} tokens; the longest context needs {need}")
        bos = [model.bos] if model.add_bos else []
        cells = []
        with bar(len(caches) * len(lengths) * len(depths) * trials, "niah", unit="trial") as pb:
            for c in caches:
                s = runtime.Session(model, n_ctx=n_ctx, type_k=c.k, type_v=c.v, flash_attn=True,
                                    n_threads=threads, n_batch=n_batch)
                try:
                    for li, L in enumerate(lengths):
                        for di, d in enumerate(depths):
                            nlen = max(len(x) for x in needles[li][di])
                            body = L - len(bos) - len(q) - nlen
                            if body < 16:
                                raise ValueError(f"context {L} is too short for the needle and the question")
                            h = int(round(d * body))
                            prefix = bos + hay[:h]
                            s.clear()
                            for p in range(0, len(prefix), n_batch):
                                s.eval(prefix[p:p + n_batch], p, outputs=np.zeros(n_batch, bool))
                            hits = []
                            for ti in range(trials):
                                s.seq_rm(0, len(prefix), -1)
                                rest = needles[li][di][ti] + hay[h:body] + q
                                logits = None
                                for p in range(0, len(rest), n_batch):
                                    logits = s.eval(rest[p:p + n_batch], len(prefix) + p)
                                got = _greedy(s, model, logits, len(prefix) + len(rest), answer)
                                hits.append(str(numbers[li][di][ti]) in got.replace(" ", ""))
                                pb.update(1)
                            cells.append({"cache": c.name, "type_k": c.k, "type_v": c.v, "bpv": c.bpv,
                                          "length": L, "depth": d, "trials": trials,
                                          "accuracy": sum(hits) / trials})
                finally:
                    s.close()
        summary = []
        for c in caches:
            acc = [x["accuracy"] for x in cells if x["cache"] == c.name]
            summary.append({"cache": c.name, "bpv": c.bpv, "accuracy": float(np.mean(acc))})
        return {"settings": {"lengths": lengths, "depths": depths, "trials": trials, "answer_tokens": answer,
                             "threads": threads, "n_gpu_layers": n_gpu_layers, "seed": seed,
                             "needle": NEEDLE.strip(), "question": QUESTION.strip()},
                "results": cells, "summary": summary}
    finally:
        model.close()
