"""Speed and memory of the gated LLM. Prints numbers; asserts nothing.

    python -m benchmarks.bench_model                 # decode overhead + tiny/medium memory + 7B estimate
    python -m benchmarks.bench_model --sizes tiny 1b # add the ~1B random config (several GB of disk, minutes)

1. Decode speed of the same converted weights with the injection active vs not, in one run,
   alternating, and their ratio (target: overhead <= 3% per token).
2. Resident memory that loading + generating adds, random configs in fp32 / 8-bit / 4-bit on CPU,
   each in a fresh subprocess so they do not mix.
3. The computed weight memory of the real 7B text path (LLaMA + bind network + ImageBind-Huge)
   in fp16 / 8-bit / 4-bit (targets: <= 12 GB in 8-bit, <= 8 GB in 4-bit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.no_eos import NoEos

# Meta params.json sizes. "medium" decodes slowly enough on CPU for a stable timing.
SIZES = {
    "tiny": ({"dim": 64, "multiple_of": 32, "n_heads": 4, "n_layers": 2, "norm_eps": 1e-5, "vocab_size": -1}, 512),
    "medium": ({"dim": 1024, "multiple_of": 256, "n_heads": 16, "n_layers": 8, "norm_eps": 1e-5, "vocab_size": -1}, 32000),
    "1b": ({"dim": 2048, "multiple_of": 256, "n_heads": 16, "n_layers": 22, "norm_eps": 1e-5, "vocab_size": -1}, 32000),
}


def build(size: str, root: Path) -> Path:
    """Random official-format files of `size`, converted (fp32). Returns the converted folder."""
    from demo.convert import convert
    from demo.tiny import tiny_adapter_state, tiny_meta_state, write_tiny_tokenizer

    params, vocab = SIZES[size]
    out = root / f"{size}-converted"
    if (out / "imagebind_llm.json").exists():
        return out
    base = root / f"{size}-llama"
    base.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    (base / "params.json").write_text(json.dumps(params))
    torch.save(tiny_meta_state(params, vocab, generator), base / "consolidated.00.pth")
    write_tiny_tokenizer(base / "tokenizer.model")
    torch.save({"model": tiny_adapter_state(params, 1024, generator)}, root / f"{size}-7B.pth")
    return convert(base, root / f"{size}-7B.pth", out, dtype=torch.float32, progress=False)



def decode_speed(folder: Path, tokens: int, rounds: int) -> None:
    from demo.config import GenerationConfig
    from demo.generation import GenerationState, stream_tokens
    from demo.model import ImageBindLLM

    model = ImageBindLLM.from_pretrained(folder, device="cpu")
    terms = model.conditioning_terms(torch.randn(1, 1024))
    prompt = list(range(3, 40))
    tokenizer = NoEos(model.tokenizer)  # random model: never stop early, decode exactly `tokens`
    config = GenerationConfig(max_new_tokens=tokens, temperature=0.0)

    gated_attention = model.llm.config._attn_implementation  # demo.injection's wrapper
    plain_attention = gated_attention.removeprefix("imagebind_")

    def run(active: bool) -> float:
        # Plain = the same Llama with transformers' own attention, no wrapper, no terms.
        model.llm.config._attn_implementation = gated_attention if active else plain_attention
        start = time.perf_counter()
        list(stream_tokens(model.llm, tokenizer, prompt, config, GenerationState(), terms=terms if active else None))
        return tokens / (time.perf_counter() - start)

    run(True), run(False)  # warm-up
    gated, plain = [], []
    for _ in range(rounds):  # alternate so drift hits both equally
        gated.append(run(True))
        plain.append(run(False))
    g, p = sorted(gated)[rounds // 2], sorted(plain)[rounds // 2]
    print(f"decode, {folder.name}: gated {g:.1f} tok/s, plain {p:.1f} tok/s, gated/plain = {g / p:.3f} "
          f"(overhead {100 * (1 - g / p):+.1f}%; median of {rounds} alternating runs of {tokens} tokens)")


CHILD = """
import ctypes, resource, sys, psutil, torch, transformers, bitsandbytes
from demo.model import ImageBindLLM
from demo.config import GenerationConfig
from demo.generation import GenerationState, stream_tokens

ROOT = Path(__file__).resolve().parents[1]
ctypes.CDLL("libc.so.6").malloc_trim(0)
before = psutil.Process().memory_info().rss
m = ImageBindLLM.from_pretrained({folder!r}, device="cpu", quantization={quant!r})
terms = m.conditioning_terms(torch.randn(1, 1024))
list(stream_tokens(m.llm, m.tokenizer, list(range(3, 40)), GenerationConfig(max_new_tokens=8, temperature=0), GenerationState(), terms=terms))
ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed load-time buffers back, count only what is kept
after = psutil.Process().memory_info().rss
tensors = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
print((after - before) / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, tensors / 2**20)
"""


def peak_memory(folder: Path) -> None:
    """Resident memory the model adds to a process that already imported torch & co."""
    for quant in (None, "8bit", "4bit"):
        code = CHILD.format(folder=str(folder), quant=quant)
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)  # `demo` from this checkout
        if result.returncode:
            print(f"memory, {folder.name}, {quant or 'fp32'}: failed: {result.stderr.strip().splitlines()[-1]}")
            continue
        added, peak, tensors = (float(x) for x in result.stdout.split()[-3:])
        # RSS also counts pages of the memory-mapped safetensors files that loading touched;
        # the tensor bytes are what the weights themselves occupy (and would on a GPU).
        print(f"memory, {folder.name}, {quant or 'fp32':5s}: weights {tensors:7.0f} MB; process RSS +{added:5.0f} MB "
              f"after load + 8 tokens (peak {peak:5.0f} MB incl. imports)")


def estimate_7b() -> None:
    """Weight bytes of the real text path, from parameter counts (no allocation)."""
    dim, layers, ffn, vocab, heads = 4096, 32, 11008, 32000, 32
    linear = layers * (4 * dim * dim + 3 * dim * ffn)  # quantisable matrices
    biases = layers * (4 * dim + 2 * ffn + dim)  # q,k,v,o + gate,up + down (attention_bias/mlp_bias)
    other = 2 * vocab * dim + (2 * layers + 1) * dim + biases  # embeddings, lm_head (kept 16-bit), norms, biases
    bind = 1024 * dim + dim + 3 * (dim + 3 * dim * 4 * dim)
    injection = layers * dim + layers * heads + 2 * layers * 16 * dim
    imagebind = {"all towers": 1_200_800_000, "vision only": 632_800_000}
    gb = 1e9
    for name, bytes_per in (("fp16", 2.0), ("8-bit", 1.0), ("4-bit", 0.5 + 0.127 / 8 * 2)):  # nf4 + double-quant constants
        llm = linear * bytes_per + other * 2
        rest = (bind + injection) * 2
        for tower, params in imagebind.items():
            total = (llm + rest + params * 2) / gb
            print(f"7B text path, {name:5s}: LLaMA {llm / gb:5.2f} GB + bind/injection {rest / gb:4.2f} GB + ImageBind fp16 "
                  f"({tower}) {params * 2 / gb:4.2f} GB = {total:5.2f} GB of weights (+ activations, KV cache ~0.5 GB at 2k tokens)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "medium"], choices=list(SIZES), help="random configs to load (default: %(default)s)")
    parser.add_argument("--decode-size", default="medium", choices=list(SIZES))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="keep generated checkpoints here (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
        decode_speed(build(args.decode_size, root), args.tokens, args.rounds)
        for size in args.sizes:
            peak_memory(build(size, root))
    estimate_7b()


if __name__ == "__main__":
    main()
