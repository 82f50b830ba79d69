"""The patched llama-server with turbo caches, driven over real HTTP on loopback: parallel
slots under concurrent clients (completion and chat endpoints), generations far past the
context with context shift, slot save/restore, a calibrated GGUF, bad input at start-up
and in requests, and the KV memory the server reports."""

import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tq_gguf.bench.caches import kv_bytes
from tq_gguf.server import Server, ServerError
from tq_gguf.tinymodel import TinyShape, sample_text, write_tiny_llama

pytestmark = pytest.mark.build
SHAPE = TinyShape()  # the tiny_model fixture's shape: 2 layers, 2 KV heads, head 64, byte vocabulary
TEXT = sample_text(8000, seed=4)
CACHES = [("turbo3", "turbo3"), ("q8_0", "turbo3"), ("turbo2", "turbo2")]


def server(model, tmp_path, *args, name="server", **kw) -> Server:
    return Server(model, "-fa", "on", *args, log=tmp_path / f"{name}.log", **kw)


def _ids(c):
    return f"{c[0]}-{c[1]}"


@pytest.mark.parametrize("cache", CACHES, ids=_ids)
def test_concurrent_clients_on_parallel_slots(built, tiny_model, tmp_path, cache):
    """8 clients x 3 requests (OpenAI completion and chat, native completion) on 4 slots:
    every request served in full, several slots busy, bounded time."""
    k, v = cache
    with server(tiny_model, tmp_path, "-np", "4", "-c", "1024", "-ctk", k, "-ctv", v) as s:
        def client(i):
            out = []
            for j, (path, body) in enumerate((
                    ("/v1/completions", {"prompt": f"client {i}: " + TEXT[i * 50:i * 50 + 80], "max_tokens": 40,
                                         "temperature": 0.8, "seed": i, "ignore_eos": True}),
                    ("/v1/chat/completions", {"messages": [{"role": "user", "content": TEXT[i * 30:i * 30 + 60]}],
                                              "max_tokens": 24, "seed": i, "ignore_eos": True}),
                    ("/completion", {"prompt": TEXT[i * 70:i * 70 + 120], "n_predict": 32, "ignore_eos": True}))):
                st, res = s.post(path, body, timeout=120)
                out.append((path, st, res, body.get("max_tokens", body.get("n_predict"))))
            return out

        t0 = time.time()
        with ThreadPoolExecutor(8) as ex:
            results = [r for rs in ex.map(client, range(8)) for r in rs]
        wall = time.time() - t0
        assert len(results) == 24
        for path, st, res, n in results:
            assert st == 200, (path, res)
            got = res["usage"]["completion_tokens"] if path.startswith("/v1") else res["tokens_predicted"]
            assert got == n, (path, got, n)
        chats = [r for p, _, r, _ in results if p == "/v1/chat/completions"]
        assert all(c["choices"][0]["message"]["role"] == "assistant" for c in chats)
        assert wall < 180
        st, slots = s.request("GET", "/slots")
        assert st == 200 and len(slots) == 4
        used = {int(x) for x in re.findall(r"slot launch_slot_: id +(\d+)", s.log_text())}
        assert len(used) >= 2, f"requests were not spread over the parallel slots: {used}"
        assert s.request("GET", "/health")[0] == 200


@pytest.mark.parametrize("cache", [("f16", "f16"), *CACHES], ids=_ids)
def test_generation_far_past_the_context_with_shift(built, tiny_model, tmp_path, cache):
    """Two clients at once, 1200 tokens each through 256-cell slots: both contexts fill and
    shift again and again; no crash, every reported probability finite, and the server
    serves the next request."""
    k, v = cache
    with server(tiny_model, tmp_path, "-np", "2", "-c", "512", "--context-shift", "-ctk", k, "-ctv", v) as s:
        def long_generation(i):
            return s.ok("/completion", {"prompt": TEXT[i * 100:i * 100 + 60], "n_predict": 1200, "ignore_eos": True,
                                        "temperature": 0, "n_probs": 1}, timeout=300)
        with ThreadPoolExecutor(2) as ex:
            results = list(ex.map(long_generation, range(2)))
        for res in results:
            assert res["tokens_predicted"] == 1200
            probs = [p["probs"][0]["prob"] if "probs" in p else math.exp(p["top_logprobs"][0]["logprob"])
                     for p in res["completion_probabilities"]]
            # one entry per emitted piece (byte tokens that end inside a UTF-8 character are merged)
            assert len(probs) > 600 and all(math.isfinite(p) and 0 < p <= 1 for p in probs)
        log = s.log_text()
        assert log.count("slot context shift") >= 8
        assert {int(x) for x in re.findall(r"id +(\d+) \| task \d+ \| slot context shift", log)} == {0, 1}
        assert s.ok("/completion", {"prompt": "again", "n_predict": 8, "ignore_eos": True})["tokens_predicted"] == 8


@pytest.mark.parametrize("cache", [*CACHES, ("f16", "f16")], ids=_ids)
def test_slot_save_restore_round_trips_exactly(built, tiny_model, tmp_path, cache):
    """Save a slot, let it move on, erase it, restore the file: the slot continues exactly as
    it did from the saved state, and saving it again writes the same bytes."""
    k, v = cache
    slots = tmp_path / "slots"
    slots.mkdir()
    with server(tiny_model, tmp_path, "-np", "2", "-c", "1024", "--slot-save-path", slots, "-ctk", k, "-ctv", v) as s:
        # token prompts: generated byte tokens need not round-trip through text
        prompt = s.ok("/tokenize", {"content": TEXT[:150], "add_special": True})["tokens"]
        first = s.ok("/completion", {"prompt": prompt, "n_predict": 24, "id_slot": 0, "cache_prompt": True,
                                     "temperature": 0, "return_tokens": True})
        saved = s.ok("/slots/0?action=save", {"filename": "a.bin"})
        assert saved["n_saved"] > 150 and (slots / "a.bin").stat().st_size > 0
        more = s.ok("/tokenize", {"content": " and then"})["tokens"]
        follow = {"prompt": prompt + first["tokens"] + more, "n_predict": 24, "id_slot": 0,
                  "cache_prompt": True, "temperature": 0, "n_probs": 3, "return_tokens": True}
        before = s.ok("/completion", follow)
        assert s.ok("/slots/0?action=erase")["n_erased"] > 0
        restored = s.ok("/slots/0?action=restore", {"filename": "a.bin"})
        assert restored["n_restored"] == saved["n_saved"]
        s.ok("/slots/0?action=save", {"filename": "b.bin"})
        assert (slots / "a.bin").read_bytes() == (slots / "b.bin").read_bytes()
        after = s.ok("/completion", follow)
        assert after["timings"]["cache_n"] >= saved["n_saved"] - 1, "the restored cells were not reused"
        assert after["tokens"] == before["tokens"]
        assert after["completion_probabilities"] == before["completion_probabilities"]


@pytest.fixture(scope="module")
def calibrated_tiny(tmp_path_factory, tiny_model):
    """The tiny model with a random calibration and a turbo3 policy (layer 0's K at q8_0)."""
    from tq_gguf.calib.schema import Calibration, LayerTransform, write_model
    rng = np.random.default_rng(1)
    h, d = SHAPE.n_head_kv, SHAPE.head_dim

    def mats():
        return np.array([np.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(h)])
    layers = [LayerTransform.build(mats(), 0.1 * rng.standard_normal((h, d)), mats(), np.zeros((h, d)))
              for _ in range(SHAPE.n_layer)]
    pol = {"turbo3": {"k": ["q8_0", "turbo3"], "v": ["turbo3", "turbo3"]}}
    out = tmp_path_factory.mktemp("cal") / "tiny.tq.gguf"
    write_model(tiny_model, out, Calibration("llama", SHAPE.n_layer, layers, pol))
    return out


def test_calibrated_gguf_is_picked_up_and_logged(built, calibrated_tiny, tmp_path):
    with server(calibrated_tiny, tmp_path, "-np", "2", "-c", "512", "-ctk", "turbo3", "-ctv", "turbo3") as s:
        srv = [ln for ln in s.log_text().splitlines() if "srv" in ln and "load_model" in ln]
        assert any(f"turbo calibration v1 from {calibrated_tiny}" in ln for ln in srv), "\n".join(srv)
        types = [ln for ln in srv if "turbo layer types" in ln]
        assert types and "q8_0" in types[0] and "turbo3" in types[0], types
        assert any("llama_kv_cache: size" in ln for ln in srv)
        res = s.ok("/completion", {"prompt": TEXT[:100], "n_predict": 16, "n_probs": 1, "ignore_eos": True})
        assert res["tokens_predicted"] == 16
    # switched off: nothing applied, and the server says nothing about a calibration
    with server(calibrated_tiny, tmp_path, "-np", "1", "-c", "256", "-ctk", "turbo3", "-ctv", "turbo3",
                name="off", env={"LLAMA_TURBO_CALIB": "off"}) as s:
        assert "turbo calibration v1 from" not in s.log_text()


def test_bad_cache_type_at_startup_is_a_clear_error(built, tiny_model, tmp_path):
    t0 = time.time()
    with pytest.raises(ServerError) as e:
        server(tiny_model, tmp_path, "-ctk", "turbo5").start()
    msg = str(e.value)
    assert "turbo5" in msg and "turbo3" in msg and "turbo2" in msg, msg
    assert time.time() - t0 < 30


def test_unservable_head_size_at_startup_is_a_clear_error(built, tmp_path):
    m = write_tiny_llama(tmp_path / "hd80.gguf", TinyShape(head_dim=80, n_head=2, n_head_kv=1))
    with pytest.raises(ServerError) as e:
        server(m, tmp_path, "-ctk", "turbo3", "-ctv", "turbo3").start()
    assert "turbo3" in str(e.value) and "80" in str(e.value), str(e.value)


def test_malformed_requests_get_errors_and_the_server_keeps_serving(built, tiny_model, tmp_path):
    slots = tmp_path / "slots"
    slots.mkdir()
    with server(tiny_model, tmp_path, "-np", "2", "-c", "512", "--no-context-shift", "--slot-save-path", slots,
                "-ctk", "turbo3", "-ctv", "turbo3") as s:
        def still_serving():
            assert s.request("GET", "/health")[0] == 200
            assert s.ok("/completion", {"prompt": "ok", "n_predict": 4, "ignore_eos": True})["tokens_predicted"] == 4

        cases = [
            ("invalid JSON", "/completion", None, b'{"prompt": "unterminated'),
            ("prompt over the slot's context", "/completion", {"prompt": TEXT[:1000], "n_predict": 4}, None),
            ("wrong type", "/completion", {"prompt": "x", "n_predict": "many"}, None),
            ("no prompt", "/v1/completions", {"max_tokens": 4}, None),
            ("chat without messages", "/v1/chat/completions", {"max_tokens": 4}, None),
            ("slot file outside the save path", "/slots/0?action=save", {"filename": "../evil.bin"}, None),
            ("restore of a missing file", "/slots/0?action=restore", {"filename": "nope.bin"}, None),
            ("unknown slot action", "/slots/0?action=explode", {"filename": "x.bin"}, None),
        ]
        for what, path, body, raw in cases:
            st, res = s.post(path, body, raw=raw)
            assert 400 <= st < 600, (what, st, res)
            err = res.get("error", {}) if isinstance(res, dict) else {}
            assert err.get("message"), (what, res)
            still_serving()
        assert not (tmp_path / "evil.bin").exists()
        st, res = s.post("/completion", {"prompt": TEXT[:1000], "n_predict": 4})
        assert "context" in res["error"]["message"], res


@pytest.mark.parametrize("cache", [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("turbo3", "turbo3"),
                                   ("turbo2", "turbo2"), ("q8_0", "turbo3")], ids=_ids)
def test_kv_memory_reported_equals_bits_per_value(built, tiny_model, tmp_path, cache):
    """The KV size the server reports is the bytes-per-value arithmetic of docs/serve.md."""
    k, v = cache
    with server(tiny_model, tmp_path, "-np", "2", "-c", "1024", "-ctk", k, "-ctv", v) as s:
        want = kv_bytes(1024, SHAPE.n_layer, SHAPE.n_head_kv, SHAPE.head_dim, SHAPE.head_dim, k, v) / 2**20
        assert s.kv_mib() == pytest.approx(want, abs=0.006), (s.kv_mib(), want)


def test_serve_doc_memory_table_is_current():
    """docs/serve.md's memory table is what scripts/serve_memory.py prints now."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "scripts" / "serve_memory.py")], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out and out in (root / "docs" / "serve.md").read_text()
