"""GPU check of the generation engine (issue 14 item 5): decode speed of a random LLaMA-7B-shaped
gated model in fp16, bitsandbytes 8-bit (outlier threshold 6.0 and 0.0), bitsandbytes 4-bit nf4 and
torchao int8 weight-only, eager and compiled, gated (with injection terms) and plain, against the
bound that bytes-of-weights / measured memory bandwidth sets; each quantised mode's logits distance
to fp16; the engine's aggregate tokens/s at 1 and 8 rows. Prints numbers; asserts nothing.

    python -m benchmarks.gpu_check --rehearse                   # CPU, tiny shape, same code paths: ~45 s of CPU time
    OUT=/tmp/gpu python -m benchmarks.gpu_check                 # on a GPU: 7B shape, ~6-8 min

Writes $OUT/gpu_check.json (after every stage, so a run cut short still returns data) and
$OUT/gpu_check.md (the table for the README). A mode whose package is missing (bitsandbytes,
torchao) is skipped and the JSON says so; each stage is guarded (an error is recorded, the next
stage runs) and skipped when fewer than its seconds are left of --budget.

What is measured, all on the same random weights (seed 0; lm_head rows past the tiny tokenizer's
vocabulary zeroed, so greedy ids stay decodable, at no cost per token):
  * decode tok/s, eager: greedy, DynamicCache, one token per forward, after a 64-token prefill;
    "gated" passes `injection_terms` (B, L, D) through demo.injection's attention wrapper,
    "plain" is the same Llama with transformers' own attention function and no terms; alternating
    rounds, medians; overhead = 1 - gated / plain.
  * decode tok/s, compiled: the engine's static path (`Engine(compile=True)`: StaticCache +
    torch.compile, CUDA graphs), one request; gated = conditioned request through the gated
    attention, plain = an engine over the plain attention (a second compilation), both timed from
    the first streamed token to the last; the compile (warm-up) time is recorded.
  * engine aggregate tok/s: 1 and 8 concurrent requests with different conditionings, from
    submission to the last token (prefills included), eager and (fp16, int8 weight-only) compiled.
  * bound tok/s = measured bandwidth / bytes read per token (every weight but the embedding
    table; quantised tensors counted by their stored bytes, scales included); fraction = tok/s / bound.
  * logits distance to fp16 on one 64-token conditioned prompt: relative L2 over all positions,
    max |diff|, top-1 agreement per position, mean KL(fp16 || mode), and how many of 32 greedy
    tokens agree (a first difference changes every later token). "within" = relative L2 <= --max-rel-l2 (default 0.05) and top-1 >= 0.9. Random
    weights give flat logits, so these numbers show the quantisation error of the kernels, not the
    released model's quality.

With the device tool (`run`, one H200; read /work/.library/device/README.md; ~15 min of device
time in all, machine start included, so ONE call of about 9 minutes):
  The machine has torch 2.11, transformers 5.17, accelerate, safetensors, sentencepiece, tokenizers,
  no bitsandbytes and no torchao. Carry wheels (Python 3.12, manylinux x86-64), downloaded here:
      echo /.whl/ >> .git/info/exclude
      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \\
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \\
          -d .whl bitsandbytes==0.50.2 torchao==0.18.0
  torchao 0.18 wants torch >= 2.11 for its C++ kernels (the device has 2.11); bitsandbytes 0.50.2
  (~43 MB) ran there before. The working tree and the carried paths travel together, 64 MiB at
  most (check with `git ls-files -z | du -ch --files0-from=- | tail -1` and `du -sh .whl`); when
  they do not fit, carry one package per call and pass --modes accordingly (fp16 runs in each
  call: it is the reference). Then ONE call, timeout_s=600, carry [".whl"]:
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
        && export PYTHONPATH=/tmp/site; set -o pipefail; PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check \\
        --budget 520 2>&1 | tee $OUT/log.txt
  What comes back: $OUT/gpu_check.json, gpu_check.md, log.txt; then give_back. Rough costs on an
  H200: build + save 13.5 GB ~40 s; fp16 eager ~15 s; each compilation ~35-60 s (two for fp16:
  gated and plain); each bitsandbytes load ~20 s and its decode (7-26 tok/s) ~20-40 s; torchao
  load + compile ~60-90 s. --budget keeps the run inside the 600 s limit: modes run in the order
  fp16, 8bit, 8bit-t0, 4bit, int8-weight-only, and one that no longer fits is skipped (recorded).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.no_eos import NoEos  # noqa: E402

SHAPE_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
SHAPE_REHEARSE = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
# mode -> (demo.model quantization name, package it needs). "8bit-t0" is registered below: the
# LLM.int8 outlier threshold 0.0 (every column int8, no fp16 outlier matmul).
MODES = {
    "fp16": (None, None),
    "8bit": ("8bit", "bitsandbytes"),
    "8bit-t0": ("8bit-t0", "bitsandbytes"),
    "4bit": ("4bit", "bitsandbytes"),
    "int8-weight-only": ("int8-weight-only", "torchao"),
}
COMPILABLE = ("fp16", "int8-weight-only")  # bitsandbytes' kernels are opaque to the compiler
PROMPT = 64  # prefill tokens

T0 = time.time()
RESULTS: dict = {}


def log(*parts) -> None:
    print(f"[{time.time() - T0:6.1f}s]", *parts, flush=True)


class Check:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.rehearse else "cpu")
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.shape = SHAPE_REHEARSE if args.rehearse else SHAPE_7B
        self.backend = "aot_eager" if args.rehearse else True  # the engine's compile=: inductor on a GPU
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))

    # ------------------------------------------------------------------------------------------
    def stage(self, name: str, seconds: float, fn, *fn_args):
        """Run fn unless fewer than `seconds` are left; record its result or its error; save."""
        left = self.args.budget - (time.time() - T0)
        if left < seconds:
            RESULTS[name] = {"skipped": f"{left:.0f} s left of --budget, this stage needs ~{seconds:.0f} s"}
            log(name, "skipped:", RESULTS[name]["skipped"])
        else:
            log("==", name)
            start = time.time()
            try:
                RESULTS[name] = fn(*fn_args) or {}
            except Exception as exc:  # noqa: BLE001  record it; the next stage runs
                RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2500:]}
                log(name, "ERROR", RESULTS[name]["error"][:300])
            RESULTS[name]["seconds"] = round(time.time() - start, 1)
            log(name, json.dumps({k: v for k, v in RESULTS[name].items() if k != "trace"}, default=str)[:600])
        self.save()

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))
        (self.out / "gpu_check.md").write_text(markdown(RESULTS))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def free(self) -> None:
        torch._dynamo.reset()  # compiled engines' code caches hold the model they were compiled for
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------------------
    def env(self) -> dict:
        import importlib.util

        import transformers

        r = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
             "device": torch.cuda.get_device_name(0) if self.device.type == "cuda" else "cpu", "dtype": str(self.dtype),
             "shape": self.shape, "rehearse": self.args.rehearse}
        for package in ("bitsandbytes", "torchao"):
            if importlib.util.find_spec(package) is None:
                r[package] = "missing"
            else:
                try:
                    r[package] = __import__(package).__version__
                except Exception as exc:  # noqa: BLE001  (a broken install: the mode will be skipped)
                    r[package] = f"import failed: {exc}"
        return r

    def bandwidth(self) -> dict:
        """Device memory bandwidth: a large device-to-device copy (bytes read + written / time)."""
        size = (2 << 30) if self.device.type == "cuda" else (64 << 20)
        a = torch.empty(size // 2, dtype=torch.float16, device=self.device).normal_()
        b = torch.empty_like(a)
        b.copy_(a)
        self.sync()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            b.copy_(a)
            self.sync()
            times.append(time.perf_counter() - start)
        del a, b
        self.free()
        return {"bytes_per_s": 2 * size / min(times), "gb_per_s": round(2 * size / min(times) / 1e9, 1)}

    # ------------------------------------------------------------------------------------------
    def build(self) -> dict:
        """The random 7B-shaped model (fp16, on the device), its converted folder (for the
        quantised loads), the conditioning terms and the fp16 reference logits."""
        from transformers import LlamaConfig, LlamaForCausalLM

        from demo.bind_network import BindNetwork
        from demo.convert import CONFIG_NAME, FORMAT_VERSION, build_tokenizer, save_tokenizer
        from demo.injection import GatedInjection
        from demo.model import ImageBindLLM
        from demo.tiny import write_tiny_tokenizer

        start = time.time()
        sp_path = write_tiny_tokenizer(self.work / "tokenizer.model")
        tokenizer = build_tokenizer(sp_path)
        config = LlamaConfig(**self.shape, max_position_embeddings=2048, rms_norm_eps=1e-6, attention_bias=True, mlp_bias=True,  # as demo/convert.py writes it
                             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
        torch.manual_seed(0)
        default = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):  # random init straight on the device
                llm = LlamaForCausalLM(config).eval()
                d, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
                bind = BindNetwork(1024, d, 4 * d, 3).eval()
                injection = GatedInjection(layers, d, heads, 16).eval()
        finally:
            torch.set_default_dtype(default)
        with torch.no_grad():
            for p in llm.parameters():  # every tensor non-trivial (HF leaves biases at zero)
                p.normal_(0, 0.02 if p.dim() > 1 else 0.01)
            for layer in llm.model.layers:
                layer.input_layernorm.weight.fill_(1.0)
                layer.post_attention_layernorm.weight.fill_(1.0)
            llm.model.norm.weight.fill_(1.0)
            llm.lm_head.weight[len(tokenizer):].zero_()  # greedy ids stay in the tiny tokenizer's vocabulary
            for p in bind.parameters():
                p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0)
            for p in (injection.prefix_query, injection.lora_v_a, injection.lora_v_b):
                p.normal_(0, 0.02)
            injection.gates.normal_(0, 0.5)
        injection.float()  # gates in fp32, as from_pretrained keeps them
        model = ImageBindLLM(llm, tokenizer, bind, injection)
        r = {"build_s": round(time.time() - start, 1), "llm_params_b": round(sum(p.numel() for p in llm.parameters()) / 1e9, 3)}
        if any(MODES[m][1] for m in self.modes):  # a quantised mode runs: save the folder it loads
            from safetensors.torch import save_file

            start = time.time()
            folder = self.work / "converted"
            llm.save_pretrained(folder / "llm", max_shard_size="4GB")
            save_tokenizer(tokenizer, sp_path, folder / "llm")
            adapter = {f"bind.{k}": v.detach().cpu().contiguous() for k, v in bind.state_dict().items()}
            adapter.update({f"injection.{k}": v.detach().cpu().float().contiguous() for k, v in injection.state_dict().items()})
            save_file(adapter, str(folder / "adapter.safetensors"))
            meta = {"format_version": FORMAT_VERSION, "llm": "llm", "adapter": "adapter.safetensors", "imagebind": None, "placeholder": True}
            (folder / CONFIG_NAME).write_text(json.dumps(meta))
            self.folder = folder
            r["save_s"] = round(time.time() - start, 1)
        self.model = model
        self.embeddings = torch.nn.functional.normalize(torch.randn(8, 1024, generator=torch.Generator().manual_seed(1)), dim=-1)
        self.prompt = [1] + [3 + (i * 7) % (len(tokenizer) - 3) for i in range(PROMPT - 1)]  # BOS + 63 ids
        terms = model.conditioning_terms(self.embeddings[:1])
        self.reference = self.logits(model, terms)  # (T, V) fp32 CPU
        self.reference_tokens = self.decode(model, terms, self.args.greedy_tokens, gated=True)[1]
        return r

    # ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, model, terms) -> torch.Tensor:
        ids = torch.tensor([self.prompt], device=model.device)
        return model.llm(input_ids=ids, injection_terms=terms).logits[0].float().cpu()  # (T, V)

    @torch.inference_mode()
    def decode(self, model, terms, tokens: int, gated: bool) -> tuple[float, list[int]]:
        """Greedy eager decode (DynamicCache); tok/s after the prefill and the tokens. Plain:
        transformers' own attention function, no terms."""
        from transformers import DynamicCache

        llm = model.llm
        gated_attention = llm.config._attn_implementation
        llm.config._attn_implementation = gated_attention if gated else gated_attention.removeprefix("imagebind_")
        extra = {"injection_terms": terms} if gated else {}
        try:
            cache = DynamicCache()
            ids = torch.tensor([self.prompt], device=model.device)
            logits = llm(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1, **extra).logits[0, -1]
            self.sync()
            start = time.perf_counter()
            out = []
            for _ in range(tokens):
                token = logits.argmax()
                out.append(token)
                logits = llm(input_ids=token.view(1, 1), past_key_values=cache, use_cache=True, logits_to_keep=1, **extra).logits[0, -1]
            self.sync()
            return tokens / (time.perf_counter() - start), [int(t) for t in out]
        finally:
            llm.config._attn_implementation = gated_attention

    def distance(self, model, terms) -> dict:
        logits = self.logits(model, terms)
        ref = self.reference
        diff = (logits - ref).norm() / ref.norm()
        kl = torch.nn.functional.kl_div(logits.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean")
        greedy = self.decode(model, terms, self.args.greedy_tokens, gated=True)[1]
        agree = sum(a == b for a, b in zip(greedy, self.reference_tokens))
        top1 = float((logits.argmax(-1) == ref.argmax(-1)).float().mean())
        return {"rel_l2": round(float(diff), 5), "max_abs": round(float((logits - ref).abs().max()), 5), "top1_agree": round(top1, 4),
                "kl": float(f"{float(kl):.3g}"), "greedy_agree": f"{agree}/{len(greedy)}",
                "within": bool(diff <= self.args.max_rel_l2 and top1 >= 0.9)}

    def engine_speed(self, model, compile, rows_list=(1, 8), gated: bool = True) -> list[dict]:
        """On one engine (one compilation for compile=): per entry of `rows_list`, the aggregate
        tok/s of that many concurrent requests with different conditionings (prefill included);
        for one row also the decode rate between the first and the last streamed token."""
        from demo.config import GenerationConfig
        from demo.engine import Engine, Request

        tokens = self.args.engine_tokens
        engine = Engine(model.llm, NoEos(model.tokenizer), max_batch=8, compile=compile, max_length=PROMPT + tokens + 16)
        terms = [model.conditioning_terms(self.embeddings[i : i + 1]) if gated else None for i in range(8)]

        def requests(n):
            return [Request(self.prompt[: PROMPT - i], terms[i], GenerationConfig(max_new_tokens=tokens, temperature=0.0)) for i in range(n)]

        try:
            start = time.perf_counter()
            for _ in engine.submit(requests(1)[0]):  # warm-up (the compilation, for compile=)
                pass
            warmup = time.perf_counter() - start
            results = []
            for rows in rows_list:
                start = time.perf_counter()
                streams = [engine.submit(r) for r in requests(rows)]
                first = None
                for _ in streams[0]:
                    first = first or time.perf_counter()
                for stream in streams[1:]:
                    for _ in stream:
                        pass
                self.sync()
                end = time.perf_counter()
                total = sum(len(s.state.token_ids) for s in streams)
                r = {"rows": rows, "aggregate_tok_s": round(total / (end - start), 1), "warmup_s": round(warmup, 1)}
                if rows == 1 and first is not None:
                    r["decode_tok_s"] = round((len(streams[0].state.token_ids) - 1) / max(end - first, 1e-9), 1)
                results.append(r)
            return results
        finally:
            engine.close()

    # ------------------------------------------------------------------------------------------
    def load(self, mode: str):
        from demo.model import ImageBindLLM

        if mode == "fp16":
            return self.model
        quantization = MODES[mode][0]
        return ImageBindLLM.from_pretrained(self.folder, device=self.device, dtype=self.dtype, quantization=quantization)

    def mode(self, mode: str) -> dict:
        package = MODES[mode][1]
        found = RESULTS["env"].get(package, "missing") if package else "built in"
        if found == "missing" or found.startswith("import failed"):
            return {"skipped": f"{package}: {found} here; carry its wheel (see the docstring)"}
        args, r = self.args, {}
        self.free()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.time()
        model = self.load(mode)
        self.sync()
        r["load_s"] = round(time.time() - start, 1)
        try:
            weights = weight_bytes(model.llm)
            r["weights_gb"] = float(f"{weights / 1e9:.4g}")
            bandwidth = RESULTS.get("bandwidth", {}).get("bytes_per_s")
            r["bound_tok_s"] = round(bandwidth / weights, 1) if bandwidth else None
            terms = model.conditioning_terms(self.embeddings[:1])
            if mode != "fp16":
                r["distance_to_fp16"] = self.distance(model, terms)
            self.decode(model, terms, 4, True), self.decode(model, terms, 4, False)  # warm-up
            gated, plain = [], []
            for _ in range(args.rounds):  # alternate: drift hits both
                gated.append(self.decode(model, terms, args.tokens, True)[0])
                plain.append(self.decode(model, terms, args.tokens, False)[0])
            g, p = median(gated), median(plain)
            r["eager"] = {"gated_tok_s": round(g, 1), "plain_tok_s": round(p, 1), "overhead_pct": round(100 * (1 - g / p), 2),
                          "fraction_of_bound": round(g / r["bound_tok_s"], 3) if r["bound_tok_s"] else None}
            r["engine_eager"] = self.engine_speed(model, False)
            if mode in COMPILABLE and not args.no_compile and self.left() > (60 if self.device.type == "cuda" else 5):
                compiled = self.engine_speed(model, self.backend)
                g = compiled[0]["decode_tok_s"]
                r["compiled"] = {"gated_tok_s": g, "compile_s": compiled[0]["warmup_s"], "engine": compiled,
                                 "fraction_of_bound": round(g / r["bound_tok_s"], 3) if r["bound_tok_s"] else None}
                # plain: another compilation (the rehearsal runs this path once, for fp16)
                if self.left() > (60 if self.device.type == "cuda" else 5) and (mode == "fp16" or not args.rehearse):
                    llm = model.llm
                    gated_attention = llm.config._attn_implementation
                    llm.config._attn_implementation = gated_attention.removeprefix("imagebind_")
                    try:
                        p = self.engine_speed(model, self.backend, (1,), gated=False)[0]["decode_tok_s"]
                    finally:
                        llm.config._attn_implementation = gated_attention
                    r["compiled"].update(plain_tok_s=p, overhead_pct=round(100 * (1 - g / p), 2))
            if self.device.type == "cuda":
                r["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            return r
        finally:
            if mode != "fp16":
                del model
            self.free()

    def left(self) -> float:
        return self.args.budget - (time.time() - T0)

    def run(self) -> None:
        from demo import model as demo_model

        demo_model.QUANTIZATION["8bit-t0"] = {"load_in_8bit": True, "llm_int8_threshold": 0.0}  # this script's extra mode
        self.modes = [m for m in self.args.modes if m in MODES]
        self.stage("env", 0, self.env)
        self.stage("bandwidth", 5, self.bandwidth)
        self.stage("build", 30 if self.device.type == "cuda" else 2, self.build)
        if "error" in RESULTS["build"] or "skipped" in RESULTS["build"]:
            return
        # fp16 first (the reference and the headline), then the quantised modes, fastest to load first.
        for mode in self.modes:
            self.stage(f"mode {mode}", 45 if self.device.type == "cuda" else 2, self.mode, mode)
            if mode == "fp16":
                del self.model  # the quantised modes load their own copy
                self.free()
        RESULTS["total_s"] = round(time.time() - T0, 1)
        self.save()
        print(markdown(RESULTS))



def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def tensor_bytes(t: torch.Tensor) -> int:
    """Stored bytes: a tensor subclass (torchao) by its inner tensors (int8 data + scales)."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


def weight_bytes(llm) -> int:
    """Bytes read per decoded token: every stored tensor (bitsandbytes' quantisation state
    included) but the embedding table, of which one row is read."""
    skip = "model.embed_tokens."
    return sum(tensor_bytes(t) for name, t in llm.state_dict().items() if not name.startswith(skip) and isinstance(t, torch.Tensor))


def markdown(results: dict) -> str:
    env = results.get("env", {})
    bandwidth = results.get("bandwidth", {}).get("gb_per_s")
    lines = [f"Device: {env.get('device')}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"bitsandbytes {env.get('bitsandbytes')}, torchao {env.get('torchao')}; measured copy bandwidth {bandwidth} GB/s; "
             f"shape {'rehearsal (tiny, CPU)' if env.get('rehearse') else 'LLaMA-7B'}.", "",
             "| mode | weights GB | bound tok/s | eager gated | eager plain | eager overhead | compiled gated | compiled plain | "
             "compiled overhead | gated / bound | engine 1 row | engine 8 rows | rel. L2 to fp16 | top-1 agree | greedy agree |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(value, suffix=""):
        return "" if value is None else f"{value}{suffix}"

    for name, r in results.items():
        if not name.startswith("mode "):
            continue
        mode = name.removeprefix("mode ")
        if "skipped" in r or "error" in r:
            lines.append(f"| {mode} | {(r.get('skipped') or r.get('error'))[:120]} |" + " |" * 14)
            continue
        eager, compiled, dist = r.get("eager", {}), r.get("compiled", {}), r.get("distance_to_fp16", {})
        engine = r.get("compiled", {}).get("engine") or r.get("engine_eager") or []
        kind = "compiled" if r.get("compiled", {}).get("engine") else "eager"
        best = max([x for x in (eager.get("gated_tok_s"), compiled.get("gated_tok_s")) if x is not None], default=None)
        fraction = round(best / r["bound_tok_s"], 3) if best and r.get("bound_tok_s") else None
        lines.append(
            f"| {mode} | {cell(r.get('weights_gb'))} | {cell(r.get('bound_tok_s'))} | {cell(eager.get('gated_tok_s'))} | "
            f"{cell(eager.get('plain_tok_s'))} | {cell(eager.get('overhead_pct'), '%')} | {cell(compiled.get('gated_tok_s'))} | "
            f"{cell(compiled.get('plain_tok_s'))} | {cell(compiled.get('overhead_pct'), '%')} | {cell(fraction)} | "
            f"{cell(engine[0]['aggregate_tok_s'] if engine else None)} ({kind}) | {cell(engine[1]['aggregate_tok_s'] if len(engine) > 1 else None)} | "
            f"{'reference' if mode == 'fp16' else cell(dist.get('rel_l2'))} | {cell(dist.get('top1_agree'))} | {cell(dist.get('greedy_agree'))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--rehearse", action="store_true", help="CPU, tiny shape, compile backend aot_eager: the same code paths in < 1 min")
    parser.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpu-check", help="where the JSON and markdown go (default: $OUT)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="(default: all; fp16 first: the reference)")
    parser.add_argument("--tokens", type=int, default=None, help="decoded tokens per eager timing (default: 64; rehearse 4)")
    parser.add_argument("--engine-tokens", type=int, default=None, help="tokens per engine request (default: 48; rehearse 4)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating gated/plain rounds (default: 3; rehearse 1)")
    parser.add_argument("--budget", type=float, default=520, help="seconds for the whole run; stages that no longer fit are skipped")
    parser.add_argument("--max-rel-l2", type=float, default=0.05, help="the stated logits distance a quantised mode must stay within")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled engine runs")
    args = parser.parse_args()
    if "fp16" not in args.modes:
        args.modes.insert(0, "fp16")  # the reference
    args.modes.sort(key=list(MODES).index)
    small = args.rehearse
    args.tokens = args.tokens or (4 if small else 64)
    args.engine_tokens = args.engine_tokens or (4 if small else 48)
    args.rounds = args.rounds or (1 if small else 3)
    args.greedy_tokens = 4 if small else 32
    if small:
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    Check(args).run()


if __name__ == "__main__":
    main()
