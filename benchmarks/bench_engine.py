"""Throughput of the generation engine on the CPU. Prints numbers; asserts nothing.

    python -m benchmarks.bench_engine                       # tiny + medium, eager; compiled on tiny
    python -m benchmarks.bench_engine --compile-sizes tiny medium --tokens 32
    python -m benchmarks.bench_engine --device cuda --dtype float16 --sizes 1b --compile-sizes 1b \
        [--quantization int8-weight-only|8bit|4bit]                     # the same on a GPU

1. Aggregate tokens/s for 1, 2, 4, 8 concurrent requests, each with its own conditioning
   (random ImageBind embedding), greedy, decoding exactly --tokens tokens (EOS never matches),
   submitted at once to one engine (max_batch 8); time from submission to the last token, so it
   includes every prefill. Goal: 8 concurrent >= 4x the tokens/s of one.
2. Eager vs compiled (compile=True: static cache + torch.compile/inductor) on the same requests,
   after a warm-up request that pays the compilation (its time is printed too).
3. Injection overhead: the same engine with conditioned requests vs plain ones (no terms, and
   transformers' own attention function instead of the gated wrapper), alternating.
4. The output layer's matmul on weights left in the memory-mapped file vs copied to ordinary
   memory (what `demo.model.in_ordinary_memory` does after loading).

Medians of --rounds alternating runs. Machine: whatever runs it (the README numbers: 2 shared
CPU cores, no GPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_model import SIZES, build
from benchmarks.no_eos import NoEos


def _requests(model, count: int, tokens: int, conditioned: bool = True):
    from demo.config import GenerationConfig
    from demo.engine import Request

    embed_dim = model.bind.proj.in_features
    requests = []
    for i in range(count):
        terms = model.conditioning_terms(torch.randn(1, embed_dim, generator=torch.Generator().manual_seed(i))) if conditioned else None
        prompt = list(range(3 + i, 40 + i))  # 37 tokens, different per request
        requests.append(Request(prompt, terms, GenerationConfig(max_new_tokens=tokens, temperature=0.0)))
    return requests


def _run(engine, requests) -> tuple[float, list[list[int]]]:
    """Submit all at once; aggregate generated tokens/s and each request's tokens."""
    start = time.perf_counter()
    streams = [engine.submit(request) for request in requests]
    for stream in streams:
        for _ in stream:
            pass
    elapsed = time.perf_counter() - start
    return sum(len(s.state.token_ids) for s in streams) / elapsed, [s.state.token_ids for s in streams]


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def concurrency(model, name: str, tokens: int, rounds: int) -> None:
    from demo.engine import Engine

    engine = Engine(model.llm, NoEos(model.tokenizer), max_batch=8)
    _run(engine, _requests(model, 2, 4))  # warm-up
    rates = {}
    for count in (1, 2, 4, 8):
        rates[count] = _median([_run(engine, _requests(model, count, tokens))[0] for _ in range(rounds)])
    engine.close()
    line = ", ".join(f"{count}: {rate:7.1f}" for count, rate in rates.items())
    print(f"engine, {name}, eager: aggregate tok/s by concurrent requests  {line}   (8 vs 1: {rates[8] / rates[1]:.2f}x)")


def compiled(model, name: str, tokens: int, rounds: int) -> None:
    from demo.engine import Engine

    tokenizer = NoEos(model.tokenizer)
    eager = Engine(model.llm, tokenizer, max_batch=8)
    fast = Engine(model.llm, tokenizer, max_batch=8, compile=True, max_length=128 + tokens)
    start = time.perf_counter()
    _run(fast, _requests(model, 1, 4))  # compiles
    print(f"engine, {name}, compiled: warm-up (compilation) {time.perf_counter() - start:.0f} s")
    for count in (1, 8):
        e, c, same = [], [], True
        for _ in range(rounds):
            rate_e, ids_e = _run(eager, _requests(model, count, tokens))
            rate_c, ids_c = _run(fast, _requests(model, count, tokens))
            e.append(rate_e), c.append(rate_c)
            same &= ids_e == ids_c
        print(f"engine, {name}, {count} request(s): eager {_median(e):7.1f} tok/s, compiled {_median(c):7.1f} tok/s, "
              f"compiled/eager = {_median(c) / _median(e):.2f}; same greedy tokens: {same}")
    eager.close(), fast.close()


def injection_overhead(model, name: str, tokens: int, rounds: int) -> None:
    from demo.engine import Engine

    engine = Engine(model.llm, NoEos(model.tokenizer), max_batch=8)
    gated_attention = model.llm.config._attn_implementation
    plain_attention = gated_attention.removeprefix("imagebind_")
    for count in (1, 8):
        gated, plain = [], []
        for _ in range(rounds):
            model.llm.config._attn_implementation = gated_attention
            gated.append(_run(engine, _requests(model, count, tokens, conditioned=True))[0])
            model.llm.config._attn_implementation = plain_attention
            plain.append(_run(engine, _requests(model, count, tokens, conditioned=False))[0])
        g, p = _median(gated), _median(plain)
        print(f"engine, {name}, {count} request(s): gated {g:7.1f} tok/s, plain {p:7.1f} tok/s, "
              f"gated/plain = {g / p:.3f} (overhead {100 * (1 - g / p):+.1f}%)")
    model.llm.config._attn_implementation = gated_attention
    engine.close()


def mapped_output_layer(folder: Path, rounds: int) -> None:
    from transformers import LlamaForCausalLM

    llm = LlamaForCausalLM.from_pretrained(folder / "llm", use_safetensors=True, dtype=torch.float32, device_map={"": "cpu"})
    mapped = llm.lm_head.weight.detach()  # a view of the memory-mapped file, as transformers leaves it
    copied = mapped.clone()
    x = torch.randn(1, mapped.shape[1])

    def per_call(weight: torch.Tensor, calls: int = 200) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            torch.nn.functional.linear(x, weight)
        return (time.perf_counter() - start) / calls

    per_call(mapped), per_call(copied)
    m, c = [], []
    for _ in range(rounds):
        m.append(per_call(mapped)), c.append(per_call(copied))
    print(f"output layer {tuple(mapped.shape)}, fp32: memory-mapped {1e3 * _median(m):.3f} ms/call, "
          f"copied {1e3 * _median(c):.3f} ms/call, mapped/copied = {_median(m) / _median(c):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "medium"], choices=list(SIZES))
    parser.add_argument("--compile-sizes", nargs="*", default=["tiny"], choices=list(SIZES),
                        help="sizes to also run compiled (inductor on a CPU compiles for minutes)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep generated checkpoints here")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 / float16 / bfloat16 (default: fp32 on CPU, fp16 on GPU)")
    parser.add_argument("--quantization", default=None, help="8bit, 4bit (bitsandbytes) or int8-weight-only (torchao)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's). On a CPU shared with other jobs, 1 thread avoids OpenMP "
                             "oversubscription, which makes small batched matmuls several times slower")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from demo.model import ImageBindLLM

    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"torch {torch.__version__}, {where}, dtype {args.dtype or 'default'}, quantization {args.quantization}; "
              f"{args.tokens} new tokens per request")
        for size in args.sizes:
            folder = build(size, root)
            model = ImageBindLLM.from_pretrained(folder, device=args.device, dtype=args.dtype, quantization=args.quantization)
            concurrency(model, size, args.tokens, args.rounds)
            injection_overhead(model, size, args.tokens, args.rounds)
            if size in args.compile_sizes:
                compiled(model, size, args.tokens, args.rounds)
            if size != "tiny" and args.device == "cpu":
                mapped_output_layer(folder, args.rounds)


if __name__ == "__main__":
    main()
