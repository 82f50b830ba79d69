"""A thin low-level session over the patched llama-cpp-python bindings.

Batched decode with explicit positions and sequences, logits as numpy arrays,
sequence edits (remove, shift) and state save/restore: what the benchmarks
and the cache tests need, without the high-level Llama object's policies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections import deque
from pathlib import Path

import numpy as np

from .ggmlc import GGML_TYPE as CACHE_TYPES  # one table of ggml_type values


def _lib():
    import llama_cpp
    _Log.install(llama_cpp)
    return llama_cpp


class _Log:
    """llama.cpp's log, kept for parsing (KV buffer sizes) and for error messages.

    Printed only at error level, or all of it with TQ_GGUF_VERBOSE=1: the
    bindings' own logger prints everything to stderr.
    """
    pieces: deque = deque(maxlen=20000)
    count = 0
    _cb = None

    @classmethod
    def install(cls, l) -> None:
        if cls._cb is not None:
            return
        verbose = os.environ.get("TQ_GGUF_VERBOSE") == "1"

        def on_log(level, text, _user):
            t = text.decode("utf-8", "replace") if text else ""
            cls.pieces.append(t)
            cls.count += 1
            if verbose or level == 3:
                sys.stderr.write(t)

        cls._cb = l.llama_log_callback(on_log)  # keep a reference: C holds the pointer
        l.llama_log_set(cls._cb, ctypes.c_void_p(0))

    @classmethod
    def mark(cls) -> int:
        return cls.count

    @classmethod
    def since(cls, mark: int) -> str:
        n = min(cls.count - mark, len(cls.pieces))
        return "".join(list(cls.pieces)[len(cls.pieces) - n:]) if n > 0 else ""


def log_tail(mark: int, lines: int = 12) -> str:
    return "\n".join(_Log.since(mark).splitlines()[-lines:])


class Model:
    def __init__(self, path: Path, n_gpu_layers: int = 0):
        l = _lib()
        l.llama_backend_init()
        mp = l.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers
        mark = _Log.mark()
        self.ptr = l.llama_model_load_from_file(str(path).encode(), mp)
        if not self.ptr:
            raise RuntimeError(f"could not load model {path}:\n{log_tail(mark)}")
        self.path = Path(path)
        self.vocab = l.llama_model_get_vocab(self.ptr)
        self.n_vocab = l.llama_vocab_n_tokens(self.vocab)
        self.n_layer = l.llama_model_n_layer(self.ptr)
        self.n_params = l.llama_model_n_params(self.ptr)
        self.add_bos = bool(l.llama_vocab_get_add_bos(self.vocab))
        self.bos = l.llama_vocab_bos(self.vocab)
        buf = ctypes.create_string_buffer(256)
        l.llama_model_desc(self.ptr, buf, len(buf))
        self.desc = buf.value.decode(errors="replace")

    def piece(self, token: int) -> str:
        l = _lib()
        buf = ctypes.create_string_buffer(64)
        n = l.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:max(n, 0)].decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(_lib().llama_vocab_is_eog(self.vocab, token))

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        l = _lib()
        raw = text.encode()
        size = len(raw) + 8
        for _ in range(2):
            buf = (l.llama_token * size)()
            n = l.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), add_bos, False)
            if n >= 0:
                return list(buf[:n])
            size = -n  # too small: it says how many are needed
        raise RuntimeError("tokenize failed")

    def close(self):
        if self.ptr:
            _lib().llama_model_free(self.ptr)
            self.ptr = None


@contextlib.contextmanager
def environ(values: dict):
    """Set environment variables (read by llama.cpp at model/context creation) for a block."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Session:
    def __init__(self, model: Model, n_ctx: int = 512, type_k: str = "f16", type_v: str = "f16",
                 flash_attn: bool = True, n_threads: int = 2, n_batch: int = 512, n_seq_max: int = 1,
                 n_ubatch: int | None = None, cb_eval=None):
        l = _lib()
        self.model = model
        if type_k not in CACHE_TYPES or type_v not in CACHE_TYPES:
            bad = type_k if type_k not in CACHE_TYPES else type_v
            raise ValueError(f"unknown cache type {bad!r}; known: {', '.join(CACHE_TYPES)}")
        cp = l.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, n_batch, min(n_ubatch or n_batch, n_batch)
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.n_seq_max = n_seq_max
        cp.type_k, cp.type_v = CACHE_TYPES[type_k], CACHE_TYPES[type_v]
        cp.flash_attn_type = l.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else l.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if cb_eval is not None:  # a ctypes callback; the caller keeps it alive
            cp.cb_eval = cb_eval
        mark = _Log.mark()
        self.ptr = l.llama_init_from_model(model.ptr, cp)
        if not self.ptr:
            raise RuntimeError(f"could not create a context with K={type_k} V={type_v} "
                               f"(flash attention {'on' if flash_attn else 'off'}):\n{log_tail(mark)}")
        from .perplexity import kv_cache_size
        self.kv = kv_cache_size(_Log.since(mark))  # what llama.cpp allocated, from its log line
        self.n_ctx = l.llama_n_ctx(self.ptr)
        self.mem = l.llama_get_memory(self.ptr)
        self.batch = l.llama_batch_init(n_batch, 0, 1)
        self.n_batch = n_batch

    def decode(self, tokens: list[int], pos0: int, seq: int = 0, all_logits: bool = False) -> np.ndarray:
        """Decode ``tokens`` at positions pos0.. in ``seq``; a copy of the last (or every) token's logits."""
        out = []
        n = len(tokens)
        for start in range(0, n, self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            want = [all_logits or start + i == n - 1 for i in range(len(chunk))]
            view = self.eval(chunk, pos0 + start, seq, outputs=want)
            if view is not None:
                out.append(view.copy())
        return np.concatenate(out) if all_logits else out[-1][-1]

    def eval(self, tokens, pos0: int, seq: int = 0, outputs=None) -> np.ndarray | None:
        """One llama_decode of at most n_batch tokens; ``outputs[i]`` asks for token i's logits.

        Returns a zero-copy [n_outputs, n_vocab] view of llama.cpp's logits,
        valid until this context decodes again (None when nothing was asked).
        """
        l = _lib()
        n = len(tokens)
        if n > self.n_batch:
            raise ValueError(f"{n} tokens exceed n_batch {self.n_batch}")
        b = self.batch
        b.n_tokens = n
        n_out = 0
        for i, t in enumerate(tokens):
            b.token[i] = int(t)
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            want = bool(outputs[i]) if outputs is not None else i == n - 1
            b.logits[i] = want
            n_out += want
        rc = l.llama_decode(self.ptr, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}) at position {pos0} with {n} tokens")
        if not n_out:
            return None
        return np.ctypeslib.as_array(l.llama_get_logits(self.ptr), shape=(n_out, self.model.n_vocab))

    def clear(self) -> None:
        _lib().llama_memory_clear(self.mem, True)

    def synchronize(self) -> None:
        _lib().llama_synchronize(self.ptr)

    def seq_rm(self, seq: int, p0: int, p1: int) -> bool:
        return _lib().llama_memory_seq_rm(self.mem, seq, p0, p1)

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        _lib().llama_memory_seq_add(self.mem, seq, p0, p1, delta)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        _lib().llama_memory_seq_cp(self.mem, src, dst, p0, p1)

    def state(self) -> bytes:
        l = _lib()
        n = l.llama_state_get_size(self.ptr)
        buf = (ctypes.c_uint8 * n)()
        got = l.llama_state_get_data(self.ptr, buf, n)
        return bytes(buf[:got])

    def set_state(self, data: bytes) -> None:
        l = _lib()
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if l.llama_state_set_data(self.ptr, buf, len(data)) != len(data):
            raise RuntimeError("llama_state_set_data did not read the whole state")

    def close(self):
        l = _lib()
        if self.ptr:
            l.llama_batch_free(self.batch)
            l.llama_free(self.ptr)
            self.ptr = None


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kld_rows(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(ref || other) of each row's next-token distribution (nats)."""
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return np.sum(np.exp(lp) * (lp - lq), axis=-1)


def kld(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL(ref || other) of the next-token distributions (nats)."""
    return float(np.mean(kld_rows(ref_logits, logits)))
