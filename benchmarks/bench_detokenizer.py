"""Streaming cost per token at 32 vs 512 new tokens. Prints numbers; asserts nothing.

    python -m benchmarks.bench_detokenizer

1. Text only: the incremental `Detokenizer` vs re-decoding the whole answer at every token (the
   previous method), on the same ids (English pieces mixed with Chinese byte-fallback runs, as
   the tiny tokenizer writes them), per token, at 32 and 512 tokens. Goal: the 512/32 ratio of the
   Detokenizer within 5% of 1.
2. End to end: `stream_tokens` on the tiny preset (random weights, no EOS, no stop strings), per
   token at 32 and 512 new tokens. The model's own attention grows with the context here too, and
   the forward pass (milliseconds) dwarfs the detokenizer (microseconds).
Best of several repeats, alternating the two lengths, measured side by side in one run.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.no_eos import NoEos


def answer_ids(tokenizer, n: int, seed: int = 0) -> list[int]:
    """n ids: words of the tiny vocabulary, with Chinese text that only byte pieces can spell."""
    rng = random.Random(seed)
    words = "a cat and a dog in the picture playing music near the water".split()
    ids: list[int] = []
    while len(ids) < n:
        text = " " + rng.choice(words) if rng.random() < 0.7 else "中文回答很好"
        ids += tokenizer.encode(text, add_special_tokens=False)
    return ids[:n]


def incremental(tokenizer):
    from demo.detokenizer import Detokenizer
    from demo.prompt import STOP_STRINGS

    def run(ids):
        detok = Detokenizer(tokenizer, STOP_STRINGS)
        for token in ids:
            detok.push(token)
        detok.finish()

    return run


def full_redecode(tokenizer):
    def run(ids):
        for n in range(1, len(ids) + 1):
            tokenizer.decode(ids[:n], skip_special_tokens=True)

    return run



def main() -> None:
    from demo.config import GenerationConfig
    from demo.convert import convert
    from demo.generation import GenerationState, stream_tokens
    from demo.model import ImageBindLLM
    from demo.tiny import write_tiny_release

    print(f"machine: {torch.get_num_threads()} torch threads, CPU only")
    with tempfile.TemporaryDirectory() as tmp:
        release = write_tiny_release(Path(tmp) / "release", with_encoder=False)
        folder = convert(release.llama_dir, release.adapter, Path(tmp) / "converted", dtype=torch.float32, progress=False)
        model = ImageBindLLM.from_pretrained(folder, device="cpu")
        tokenizer = model.tokenizer

        print("\n1. text only, per token (512 tokens each time: 16 answers of 32 or one of 512; best of 30, alternating)")
        print(f"{'method':<22}{'32 tokens':>12}{'512 tokens':>12}{'512/32':>9}")
        ids = answer_ids(tokenizer, 32)  # the same 32 ids at both lengths: the same mix of pieces and byte runs
        for name, make, repeats in (("Detokenizer", incremental, 30), ("re-decode all (old)", full_redecode, 3)):
            step = make(tokenizer)
            step(ids)  # warm up (the decode table is built once per tokenizer)
            short = long = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(16):
                    step(ids)
                short = min(short, (time.perf_counter() - start) / 512)
                start = time.perf_counter()
                step(ids * 16)
                long = min(long, (time.perf_counter() - start) / 512)
            print(f"{name:<22}{short * 1e6:>10.1f}us{long * 1e6:>10.1f}us{long / short:>9.3f}")

        print("\n2. stream_tokens on the tiny preset, per token (best of 4, alternating; includes the model, whose attention grows with the context)")
        terms = model.conditioning_terms(torch.randn(1, model.bind.proj.in_features, generator=torch.Generator().manual_seed(0)))
        prompt = [1] + tokenizer.encode("Describe the sound.", add_special_tokens=False)
        no_eos = NoEos(tokenizer)

        def generate(n: int) -> float:
            state = GenerationState()
            start = time.perf_counter()
            for _ in stream_tokens(model.llm, no_eos, prompt, GenerationConfig(max_new_tokens=n, temperature=1.0, seed=0), state,
                                   terms=terms):
                pass
            return (time.perf_counter() - start) / len(state.token_ids)

        generate(8)
        # Alternate the two lengths so that load from other processes hits both alike; best of 4.
        runs = [(generate(32), generate(512)) for _ in range(4)]
        short, long = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"{'stream_tokens':<22}{short * 1e3:>10.2f}ms{long * 1e3:>10.2f}ms{long / short:>9.3f}")


if __name__ == "__main__":
    main()
