#!/usr/bin/env python3
"""KV cache memory per cache type, model shape and context length, from the types' bits per
value (tq_gguf.bench.caches.kv_bytes, the arithmetic the server tests check against the
server's own `llama_kv_cache: size` line). Prints the Markdown table of docs/serve.md.

    python scripts/serve_memory.py
"""

from tq_gguf.bench.caches import kv_bytes

# name: (layers, KV heads, head size), from the models' config.json
SHAPES = {
    "SmolLM2-135M": (30, 3, 64),
    "Qwen2.5-7B": (28, 4, 128),
    "Llama-3.1-8B": (32, 8, 128),
    "Llama-3.1-70B": (80, 8, 128),
}
CONTEXTS = (8192, 32768, 131072)
CACHES = (("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "turbo3"), ("turbo3", "turbo3"),
          ("turbo2", "turbo2"))


def fmt(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def main() -> None:
    names = [k if k == v else f"{k}-K/{v}-V" for k, v in CACHES]
    print("| model (layers × KV heads × head) | context | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(CACHES))
    for model, (n_layer, n_kv, d) in SHAPES.items():
        for ctx in CONTEXTS:
            f16 = kv_bytes(ctx, n_layer, n_kv, d, d, "f16", "f16")
            cells = []
            for k, v in CACHES:
                b = kv_bytes(ctx, n_layer, n_kv, d, d, k, v)
                cells.append(fmt(b) if (k, v) == ("f16", "f16") else f"{fmt(b)} ({f16 / b:.1f}×)")
            print(f"| {model} ({n_layer}×{n_kv}×{d}) | {ctx // 1024}K | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
