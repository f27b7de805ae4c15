"""Streaming cost per token at 32 vs 512 new tokens. Prints numbers; asserts nothing.

    python benchmarks/bench_detokenizer.py

1. Text only: the incremental `Detokenizer` vs re-decoding the whole answer at every token (the
   previous method), on the same ids (English pieces mixed with Chinese byte-fallback runs, as
   the tiny tokenizer writes them), per token, at 32 and 512 tokens. Goal: the 512/32 ratio of the
   Detokenizer within 5% of 1.
2. End to end: `stream_tokens` on the tiny preset (random weights, no EOS, no stop strings), per
   token at 32 and 512 new tokens. The model's own attention grows with the context here too.
Best of several repeats, measured side by side in one run.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def answer_ids(tokenizer, n: int, seed: int = 0) -> list[int]:
    """n ids: words of the tiny vocabulary, with Chinese text that only byte pieces can spell."""
    rng = random.Random(seed)
    words = "a cat and a dog in the picture playing music near the water".split()
    ids: list[int] = []
    while len(ids) < n:
        text = " " + rng.choice(words) if rng.random() < 0.7 else "中文回答很好"
        ids += tokenizer.encode(text, add_special_tokens=False)
    return ids[:n]


def per_token_seconds(step, ids: list[int], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step(ids)
        best = min(best, time.perf_counter() - start)
    return best / len(ids)


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


class _NoEos:
    """The tokenizer, with an EOS id no token has (every answer runs to max_new_tokens)."""

    eos_token_id = -1

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __len__(self):
        return len(self._tokenizer)


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

        print("\n1. text only, per token (best of 40; 5 for the slow one)")
        print(f"{'method':<22}{'32 tokens':>12}{'512 tokens':>12}{'512/32':>9}")
        for name, make in (("Detokenizer", incremental), ("re-decode all (old)", full_redecode)):
            step = make(tokenizer)
            # The same 32 ids repeated: the same mix of pieces and byte runs at both lengths.
            ids = answer_ids(tokenizer, 32)
            step(ids)  # warm up (the decode table is built once per tokenizer)
            short = per_token_seconds(step, ids, 40)
            long = per_token_seconds(step, ids * 16, 5 if make is full_redecode else 40)
            print(f"{name:<22}{short * 1e6:>10.1f}us{long * 1e6:>10.1f}us{long / short:>9.3f}")

        print("\n2. stream_tokens on the tiny preset, per token (best of 3)")
        terms = model.conditioning_terms(torch.randn(1, model.bind.proj.in_features, generator=torch.Generator().manual_seed(0)))
        prompt = [1] + tokenizer.encode("Describe the sound.", add_special_tokens=False)
        no_eos = _NoEos(tokenizer)

        def generate(n: int) -> float:
            best = float("inf")
            for _ in range(3):
                state = GenerationState()
                start = time.perf_counter()
                with model.injection.active(terms):
                    for _ in stream_tokens(model.llm, no_eos, prompt, GenerationConfig(max_new_tokens=n, temperature=1.0, seed=0), state):
                        pass
                best = min(best, (time.perf_counter() - start) / len(state.token_ids))
            return best

        generate(8)
        short, long = min(generate(32) for _ in range(3)), generate(512)
        print(f"{'stream_tokens':<22}{short * 1e3:>10.2f}ms{long * 1e3:>10.2f}ms{long / short:>9.3f}")


if __name__ == "__main__":
    main()
