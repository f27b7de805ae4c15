"""Convert the released files into one ready-to-load folder.

Inputs (reference sections 5 and 6):
  * the base LLaMA, in Meta's format (params.json + consolidated.*.pth, tokenizer.model beside it
    or one folder up, as Meta distributes it) or in Hugging Face format (config.json + weights);
  * optionally the Open-Chinese-LLaMA delta (Meta format), added element-wise;
  * the adapter `7B.pth` ({'model': {...}}).

Output folder:
  llm/                  Hugging Face LlamaForCausalLM (sharded safetensors) with the adapter's
                        biases, norms and LoRA folded in, plus the tokenizer
  adapter.safetensors   bind network, prefix_query, gates, and the v LoRA factors the injection
                        needs (see injection.py)
  imagebind_llm.json    what the folder holds, where the ImageBind weights are, and the backbone's
                        settings (demo/backbone.py: context, rope base, kv heads, bos/eos, ...)

Every tensor of `7B.pth` must be consumed; a missing or unexpected key stops the conversion with
every such key named, and so does a structure other than the release's (3 bind blocks, LoRA rank
16) unless `custom_structure` is asked for. Sizes are read from the tensors (and the head count
from the config), so the same code converts the 7B release and the tiny test checkpoints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .backbone import FOLDER_KEY as BACKBONE_KEY
from .backbone import RELEASE as RELEASE_BACKBONE
from .backbone import Backbone
from .bind_network import rename_official_bind_key
from .errors import WeightsError
from .folder_format import ADAPTER_NAME, CONFIG_NAME, FORMAT_VERSION, LLM_DIR, SENTENCEPIECE_NAME  # noqa: F401 (re-exported)

# ---------------------------------------------------------------------------------------------
# Key tables
# ---------------------------------------------------------------------------------------------

# Hugging Face name -> (Meta name, rotary permutation: "q"/"k"/None, Meta shard concat dim or None).
# Meta shards split column-parallel weights on dim 0 and row-parallel ones on dim 1 (13B and up).
LLAMA_KEYS: dict[str, tuple[str, str | None, int | None]] = {
    "model.embed_tokens.weight": ("tok_embeddings.weight", None, 1),
    "model.norm.weight": ("norm.weight", None, None),
    "lm_head.weight": ("output.weight", None, 0),
    "model.layers.{i}.self_attn.q_proj.weight": ("layers.{i}.attention.wq.weight", "q", 0),
    "model.layers.{i}.self_attn.k_proj.weight": ("layers.{i}.attention.wk.weight", "k", 0),
    "model.layers.{i}.self_attn.v_proj.weight": ("layers.{i}.attention.wv.weight", None, 0),
    "model.layers.{i}.self_attn.o_proj.weight": ("layers.{i}.attention.wo.weight", None, 1),
    "model.layers.{i}.mlp.gate_proj.weight": ("layers.{i}.feed_forward.w1.weight", None, 0),
    "model.layers.{i}.mlp.up_proj.weight": ("layers.{i}.feed_forward.w3.weight", None, 0),
    "model.layers.{i}.mlp.down_proj.weight": ("layers.{i}.feed_forward.w2.weight", None, 1),
    "model.layers.{i}.input_layernorm.weight": ("layers.{i}.attention_norm.weight", None, None),
    "model.layers.{i}.post_attention_layernorm.weight": ("layers.{i}.ffn_norm.weight", None, None),
}
# Meta keys that carry no weights the HF model needs (LLaMA-1 stores its rotary table).
META_IGNORED = {"rope.freqs"}

# Per-layer projection (HF name under model.layers.{i}.) -> (adapter bias key or None,
# adapter LoRA stem, rotary permutation of the output rows). Adapter keys are under
# `llama.layers.{i}.`; LoRA is y += l2(l1(x)) with scale 1 (reference section 4).
ADAPTER_PROJECTIONS: dict[str, tuple[str | None, str, str | None]] = {
    "self_attn.q_proj": ("attention.wq.bias", "attention.lora_wq", "q"),
    "self_attn.k_proj": (None, "attention.lora_wk", "k"),
    "self_attn.v_proj": (None, "attention.lora_wv", None),
    "self_attn.o_proj": ("attention.wo.bias", "attention.lora_wo", None),
    "mlp.gate_proj": ("feed_forward.w1.bias", "feed_forward.lora_w1", None),
    "mlp.up_proj": ("feed_forward.w3.bias", "feed_forward.lora_w3", None),
    "mlp.down_proj": ("feed_forward.w2.bias", "feed_forward.lora_w2", None),
}
# HF norm (under model.layers.{i}.) -> adapter key (under llama.layers.{i}.): fine-tuned values
# that REPLACE the base ones.
ADAPTER_NORMS = {"input_layernorm": "attention_norm.weight", "post_attention_layernorm": "ffn_norm.weight"}
ADAPTER_GATE = "attention.gate"
ADAPTER_GLOBAL = {"prefix_query.weight", "llama.norm.weight"}


def _expand(template: str, n_layers: int) -> list[str]:
    return [template.format(i=i) for i in range(n_layers)] if "{i}" in template else [template]


def rotary_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta rotates interleaved pairs, HF rotates halves: reorder output rows per head.

    Applies to anything whose output lands in q or k space (weights, q bias, LoRA B).
    (out, ...) -> (heads, head_dim/2, 2, ...) -> swap the middle axes -> (out, ...).
    """
    out = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, out // n_heads // 2, 2, *rest).transpose(1, 2).reshape(out, *rest)


# ---------------------------------------------------------------------------------------------
# Reading checkpoints
# ---------------------------------------------------------------------------------------------


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """Safe, lazy load: no arbitrary unpickling, tensors memory-mapped (a 13 GB file costs no RAM)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise WeightsError(
            f"cannot read {path}: {exc}. The file may be incomplete (an interrupted download): "
            "check its size against `ibllm download --list` and download it again."
        ) from exc


@dataclass
class LlamaShape:
    """The sizes of a base LLaMA, read from its tensors and params.json / config.json."""

    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    intermediate: int
    norm_eps: float


class BaseCheckpoint:
    """A base LLaMA read tensor by tensor, always answered in Hugging Face names and layout."""

    shape: LlamaShape
    source: str

    def get(self, hf_key: str) -> torch.Tensor:
        raise NotImplementedError

    def hf_keys(self) -> list[str]:
        keys: list[str] = []
        for template in LLAMA_KEYS:
            keys += _expand(template, self.shape.n_layers)
        return keys


class MetaCheckpoint(BaseCheckpoint):
    def __init__(self, folder: Path):
        params_path = folder / "params.json"
        shards = sorted(folder.glob("consolidated.*.pth"))
        if not params_path.exists() or not shards:
            raise WeightsError(f"{folder} is not a Meta-format LLaMA folder (needs params.json and consolidated.*.pth)")
        self.params = json.loads(params_path.read_text())
        self.shards = [_torch_load(p) for p in shards]
        self.source = str(folder)
        first = self.shards[0]
        known = {meta for meta, _, _ in LLAMA_KEYS.values()}
        n_layers = self.params["n_layers"]
        expected = {k for template in known for k in _expand(template, n_layers)}
        present = set(first)
        unexpected = sorted(present - expected - META_IGNORED)
        missing = sorted(expected - present)
        if missing or unexpected:
            raise WeightsError(f"{folder}: not a LLaMA checkpoint of {n_layers} layers; missing {missing[:8]}, unexpected {unexpected[:8]}")
        embed = self._meta("tok_embeddings.weight", 1)
        self.shape = LlamaShape(
            dim=embed.shape[1],
            n_layers=n_layers,
            n_heads=self.params["n_heads"],
            vocab_size=embed.shape[0],
            intermediate=self._meta("layers.0.feed_forward.w1.weight", 0).shape[0],
            norm_eps=self.params.get("norm_eps", 1e-5),
        )

    def _meta(self, key: str, dim: int | None) -> torch.Tensor:
        if len(self.shards) == 1 or dim is None:
            return self.shards[0][key]
        return torch.cat([s[key] for s in self.shards], dim=dim)

    def get(self, hf_key: str) -> torch.Tensor:
        template, index = _match_template(hf_key, LLAMA_KEYS)
        meta_template, permute, dim = LLAMA_KEYS[template]
        tensor = self._meta(meta_template.format(i=index), dim)
        return rotary_permute(tensor, self.shape.n_heads) if permute else tensor


class HFCheckpoint(BaseCheckpoint):
    def __init__(self, folder: Path):
        from safetensors import safe_open

        config_path = folder / "config.json"
        if not config_path.exists():
            raise WeightsError(f"{folder} is not a Hugging Face model folder (no config.json)")
        config = json.loads(config_path.read_text())
        self.source = str(folder)
        self._tensors: dict[str, Callable[[], torch.Tensor]] = {}
        files = sorted(folder.glob("*.safetensors"))
        for path in files:
            handle = safe_open(str(path), framework="pt")
            for key in handle.keys():
                self._tensors[key] = lambda h=handle, k=key: h.get_tensor(k)
        if not files:
            for path in sorted(folder.glob("pytorch_model*.bin")):
                state = _torch_load(path)
                for key in state:
                    self._tensors[key] = lambda s=state, k=key: s[k]
        if not self._tensors:
            raise WeightsError(f"{folder}: no *.safetensors or pytorch_model*.bin weights found")
        if config.get("num_key_value_heads", config["num_attention_heads"]) != config["num_attention_heads"]:
            raise WeightsError(f"{folder}: grouped-query attention is not LLaMA-1; the release needs a LLaMA-1 7B base")
        self.shape = LlamaShape(
            dim=config["hidden_size"],
            n_layers=config["num_hidden_layers"],
            n_heads=config["num_attention_heads"],
            vocab_size=config["vocab_size"],
            intermediate=config["intermediate_size"],
            norm_eps=config.get("rms_norm_eps", 1e-5),
        )
        missing = [k for k in self.hf_keys() if k not in self._tensors]
        if missing:
            raise WeightsError(f"{folder}: missing tensors {missing[:8]}")

    def get(self, hf_key: str) -> torch.Tensor:
        return self._tensors[hf_key]()


def open_base(folder: Path) -> BaseCheckpoint:
    folder = Path(folder)
    if (folder / "params.json").exists():
        return MetaCheckpoint(folder)
    if (folder / "config.json").exists():
        return HFCheckpoint(folder)
    raise WeightsError(
        f"{folder}: neither a Meta-format LLaMA (params.json + consolidated.*.pth) nor a Hugging Face "
        "folder (config.json + weights). See README, section Weights."
    )


def _match_template(key: str, table: dict) -> tuple[str, int | None]:
    for template in table:
        if "{i}" not in template:
            if key == template:
                return template, None
            continue
        match = re.fullmatch(re.escape(template).replace(r"\{i\}", r"(\d+)"), key)
        if match:
            return template, int(match.group(1))
    raise KeyError(key)


# ---------------------------------------------------------------------------------------------
# The adapter (7B.pth)
# ---------------------------------------------------------------------------------------------


def load_adapter_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    state = _torch_load(Path(path))
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected {{'model': {{name: tensor}}}} as in the released 7B.pth")
    return state


# The released adapter's structure (reference section 5): 3 bind blocks of hidden width 4 x dim,
# LoRA rank 16, one gate per head. Anything else is a custom adapter, converted only on request.
RELEASE_BIND_BLOCKS = 3
RELEASE_LORA_RANK = 16
CUSTOM_STRUCTURE_HINT = (
    "If this is an adapter you trained with a different structure on purpose, convert it with "
    "--custom-structure (convert(..., custom_structure=True))."
)
BIND_BLOCK_KEY = re.compile(r"image_bind_(?:norm|f1|f2|f3)_(\d+)\.weight")


def expected_adapter_keys(n_layers: int, bind_blocks: int) -> set[str]:
    keys = set(ADAPTER_GLOBAL) | {"image_bind_proj.weight", "image_bind_proj.bias"}
    for k in range(1, bind_blocks + 1):
        keys |= {f"image_bind_norm_{k}.weight", f"image_bind_f1_{k}.weight", f"image_bind_f2_{k}.weight", f"image_bind_f3_{k}.weight"}
    for i in range(n_layers):
        prefix = f"llama.layers.{i}."
        keys.add(prefix + ADAPTER_GATE)
        keys |= {prefix + name for name in ADAPTER_NORMS.values()}
        for bias, lora, _ in ADAPTER_PROJECTIONS.values():
            if bias:
                keys.add(prefix + bias)
            keys |= {prefix + lora + "_l1.weight", prefix + lora + "_l2.weight"}
    return keys


def _named(keys: list[str], limit: int = 40) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... and {len(keys) - limit} more" if len(keys) > limit else shown


def check_adapter_keys(adapter: dict[str, torch.Tensor], n_layers: int, custom_structure: bool = False) -> None:
    """Fail loudly, naming every missing and unexpected key, unless the adapter has the release's keys.

    The release has exactly RELEASE_BIND_BLOCKS bind blocks; with `custom_structure` the block
    count is read from the file (the highest block number of any bind tensor, so a block with one
    tensor missing is still counted and its missing tensor named).
    """
    found = {int(m.group(1)) for k in adapter if (m := BIND_BLOCK_KEY.fullmatch(k))}
    blocks = max(found, default=0) if custom_structure else RELEASE_BIND_BLOCKS
    expected = expected_adapter_keys(n_layers, blocks)
    missing = sorted(expected - set(adapter))
    unexpected = sorted(set(adapter) - expected)
    if missing or unexpected:
        what = f"an adapter with {blocks} bind blocks" if custom_structure else f"the released structure ({RELEASE_BIND_BLOCKS} bind blocks)"
        parts = [f"the adapter checkpoint does not match {what} for a {n_layers}-layer base:"]
        if missing:
            parts.append(f"{len(missing)} missing tensors: {_named(missing)}.")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors: {_named(unexpected)}.")
        parts.append("Is it the released 7B.pth, complete, for this base model?")
        if not custom_structure and found != set(range(1, RELEASE_BIND_BLOCKS + 1)) and found:
            parts.append(f"It has bind blocks {sorted(found)}. {CUSTOM_STRUCTURE_HINT}")
        raise WeightsError(" ".join(parts))


def check_adapter_shapes(adapter: dict[str, torch.Tensor], shape: "LlamaShape", custom_structure: bool = False) -> None:
    """Every tensor's shape against the base's sizes (keys already checked). The release's bind
    hidden width is 4 x dim and its LoRA rank 16; `custom_structure` reads both from the file."""
    dim, n_layers, heads, ffn = shape.dim, shape.n_layers, shape.n_heads, shape.intermediate
    embed = adapter["image_bind_proj.weight"].shape[-1]
    hidden = adapter["image_bind_f1_1.weight"].shape[0] if custom_structure and "image_bind_f1_1.weight" in adapter else 4 * dim
    rank = adapter["llama.layers.0.attention.lora_wq_l1.weight"].shape[0] if custom_structure and n_layers else RELEASE_LORA_RANK
    want: dict[str, tuple[int, ...]] = {
        "image_bind_proj.weight": (dim, embed), "image_bind_proj.bias": (dim,),
        "prefix_query.weight": (n_layers, dim), "llama.norm.weight": (dim,),
    }
    for key in adapter:
        if m := BIND_BLOCK_KEY.fullmatch(key):
            kind = key.split("_")[2]
            want[key] = {"norm": (dim,), "f1": (hidden, dim), "f2": (dim, hidden), "f3": (hidden, dim)}[kind]
    widths = {"attention": (dim, dim), "feed_forward.w1": (dim, ffn), "feed_forward.w3": (dim, ffn), "feed_forward.w2": (ffn, dim)}
    for i in range(n_layers):
        p = f"llama.layers.{i}."
        want[p + ADAPTER_GATE] = (1, heads, 1, 1)
        for name in ADAPTER_NORMS.values():
            want[p + name] = (dim,)
        for bias, lora, _ in ADAPTER_PROJECTIONS.values():
            in_dim, out_dim = widths["attention" if lora.startswith("attention") else "feed_forward." + lora.split("lora_")[1]]
            want[p + lora + "_l1.weight"] = (rank, in_dim)
            want[p + lora + "_l2.weight"] = (out_dim, rank)
            if bias:
                want[p + bias] = (out_dim,)
    wrong = [f"{k} {tuple(adapter[k].shape)} (expected {v})" for k, v in want.items() if k in adapter and tuple(adapter[k].shape) != v]
    if wrong:
        hint = "" if custom_structure else f" {CUSTOM_STRUCTURE_HINT}"
        raise WeightsError(
            f"the adapter's tensors do not have the released shapes for this base (dim {dim}, {n_layers} layers, {heads} heads, "
            f"FFN {ffn}): {len(wrong)} differ: {_named(wrong, 12)}. Is it the released 7B.pth, for this base model?{hint}"
        )


def fold_adapter(hf_key: str, tensor: torch.Tensor, adapter: dict[str, torch.Tensor], n_heads: int) -> torch.Tensor:
    """The base tensor with the adapter's fine-tuned values for it applied (fp32 maths)."""
    if hf_key == "model.norm.weight":
        return adapter["llama.norm.weight"].float()
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_key)
    if not match:
        return tensor.float()
    index, module = int(match.group(1)), match.group(2)
    prefix = f"llama.layers.{index}."
    if module in ADAPTER_NORMS:
        return adapter[prefix + ADAPTER_NORMS[module]].float()
    if module in ADAPTER_PROJECTIONS:
        _, lora, permute = ADAPTER_PROJECTIONS[module]
        a = adapter[prefix + lora + "_l1.weight"].float()  # (r, in)
        b = adapter[prefix + lora + "_l2.weight"].float()  # (out, r)
        if permute:
            b = rotary_permute(b, n_heads)
        return tensor.float() + b @ a  # W + B A, LoRA scale 1
    return tensor.float()


def adapter_bias(hf_module_key: str, adapter: dict[str, torch.Tensor], n_heads: int, out_dim: int) -> torch.Tensor:
    """Bias for `model.layers.{i}.<projection>`: the fine-tuned one, or zeros (k, v)."""
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_module_key)
    index, module = int(match.group(1)), match.group(2)
    bias_key, _, permute = ADAPTER_PROJECTIONS[module]
    if bias_key is None:
        return torch.zeros(out_dim)
    bias = adapter[f"llama.layers.{index}.{bias_key}"].float()
    return rotary_permute(bias, n_heads) if permute else bias


def injection_tensors(adapter: dict[str, torch.Tensor], n_layers: int, n_heads: int) -> dict[str, torch.Tensor]:
    """Bind network (our names), prefix, gates and v LoRA factors, for adapter.safetensors."""
    out: dict[str, torch.Tensor] = {}
    for key, value in adapter.items():
        ours = rename_official_bind_key(key)
        if ours is not None:
            out["bind." + ours] = value.float()
    layers = [f"llama.layers.{i}." for i in range(n_layers)]
    out["injection.prefix_query"] = adapter["prefix_query.weight"].float()  # (L, D)
    out["injection.gates"] = torch.stack([adapter[p + ADAPTER_GATE].float().reshape(n_heads) for p in layers])  # (L, heads)
    out["injection.lora_v_a"] = torch.stack([adapter[p + "attention.lora_wv_l1.weight"].float() for p in layers])  # (L, r, D)
    out["injection.lora_v_b"] = torch.stack([adapter[p + "attention.lora_wv_l2.weight"].float() for p in layers])  # (L, D, r)
    return out


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _llm_tensors(base: BaseCheckpoint, delta: BaseCheckpoint | None, adapter: dict, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    n_heads = base.shape.n_heads
    for key in base.hf_keys():
        tensor = base.get(key).float()
        if delta is not None:
            tensor = tensor + delta.get(key).float()
        tensor = fold_adapter(key, tensor, adapter, n_heads)
        yield key, tensor.to(dtype).contiguous()
        # attention_bias / mlp_bias = True in the HF config: every projection gets its bias.
        module = key.removesuffix(".weight")
        short = module.split(".", 3)[-1] if module.startswith("model.layers.") else ""
        if short in ADAPTER_PROJECTIONS:
            yield module + ".bias", adapter_bias(module, adapter, n_heads, tensor.shape[0]).to(dtype).contiguous()


def _write_sharded(tensors: Iterator[tuple[str, torch.Tensor]], folder: Path, max_shard_bytes: int, progress: bool) -> None:
    """Write safetensors shards plus the index Hugging Face loads, holding one shard in RAM."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    written: dict[str, str] = {}
    total = 0
    names: list[str] = []

    def flush() -> None:
        name = f"model-{len(names) + 1:05d}.safetensors"
        save_file(shards[-1], str(folder / name), metadata={"format": "pt"})
        for key in shards[-1]:
            written[key] = name
        names.append(name)
        shards[-1] = {}
        sizes[-1] = 0

    for key, tensor in tqdm(tensors, desc="converting LLaMA", unit="tensor", disable=not progress):
        nbytes = tensor.numel() * tensor.element_size()
        if sizes[-1] and sizes[-1] + nbytes > max_shard_bytes:
            flush()
        shards[-1][key] = tensor
        sizes[-1] += nbytes
        total += nbytes
    if shards[-1]:
        flush()
    # Rename to the "-of-N" pattern once N is known.
    final = {name: f"model-{i + 1:05d}-of-{len(names):05d}.safetensors" for i, name in enumerate(names)}
    for old, new in final.items():
        (folder / old).rename(folder / new)
    index = {"metadata": {"total_size": total}, "weight_map": {k: final[v] for k, v in sorted(written.items())}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def find_tokenizer(base_folder: Path, explicit: Path | None) -> Path:
    candidates = [explicit] if explicit else [base_folder / "tokenizer.model", base_folder.parent / "tokenizer.model"]
    for path in candidates:
        if path and Path(path).is_file():
            return Path(path)
    raise WeightsError(
        f"no tokenizer.model found (looked at {', '.join(str(c) for c in candidates)}); pass --tokenizer PATH "
        "(the original LLaMA SentencePiece model)"
    )


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------

# Texts on which the converted tokenizer must give exactly SentencePiece's ids: whitespace runs and
# leading spaces, newlines and tabs, characters NFKC changes, CJK, emoji, digits, combining marks,
# special-token look-alikes, and the prompt template.
TOKENIZER_CHECK_TEXTS = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\nWhat is in this picture?\n\n### Response: A cat.",
    "  two  leading spaces,   runs    of spaces, trailing  ",
    " one leading space\nnew line\n\n\ttab\r\nwindows line\u3000ideographic space\u00a0no-break",
    "ＦＵＬＬ ｗｉｄｔｈ ﬁ ligature ① ² ½ Ⅳ ㎏ ｶﾀｶﾅ e\u0301 café Å",
    "中文回答：这是一只猫。日本語のテキスト 한국어 😀👍🏽 ∑ ≠ →",
    "digits 1234567890 3.14 2024-01-01 <s> </s> <unk> <0x41> ▁ x▁y ▁▁",
    "\n",
    "",
)
# Plus short random strings over the characters where normalisers differ (seeded: the same each run).
TOKENIZER_CHECK_ALPHABET = list("ab c\n\t\r.中文ＡﬁéÅ①²😀<s>#:") + [" ", "  ", "\u3000", "\u00a0", "e\u0301", "\u200b", "\u2581"]


def tokenizer_check_texts(n_random: int = 500) -> list[str]:
    import random

    rng = random.Random(0)
    generated = ["".join(rng.choice(TOKENIZER_CHECK_ALPHABET) for _ in range(rng.randint(1, 16))) for _ in range(n_random)]
    return list(TOKENIZER_CHECK_TEXTS) + generated


def load_sentencepiece(path: Path):
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except Exception as exc:  # RuntimeError/OSError from the C++ parser
        raise WeightsError(f"{path} is not a SentencePiece model ({exc}); pass the LLaMA tokenizer.model") from None


def build_tokenizer(tokenizer_path: Path):
    """The Hugging Face form of `tokenizer_path`, giving exactly SentencePiece's ids; refused otherwise.

    The normaliser follows the SentencePiece model's own rule (reference section 6: LLaMA's is
    identity, with a dummy-prefix "▁" and spaces as "▁"): its precompiled character map (NFKC and
    similar), whitespace folding, dummy prefix, whitespace escaping. There is no pre-tokenizer: a
    Metaspace pre-tokenizer (transformers' default for Llama) drops the dummy prefix before a
    leading space. Special tokens are never read from the text ("<s>" typed by a user is text, as in
    SentencePiece). The result is then checked on `tokenizer_check_texts()` (refused if any differs):
    this is exact for LLaMA's rule and for SentencePiece's default nmt_nfkc with whitespace folding
    (tests train both); other combinations are refused with the first difference named.
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, normalizers
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    sp = load_sentencepiece(tokenizer_path)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    spec = proto.normalizer_spec
    if proto.trainer_spec.model_type != proto.trainer_spec.BPE:
        raise WeightsError(
            f"{tokenizer_path} is a SentencePiece {proto.trainer_spec.ModelType.Name(proto.trainer_spec.model_type)} "
            "model; LLaMA's tokenizer (the release's) is BPE. Pass the LLaMA tokenizer.model."
        )
    # The vocabulary, merges and byte fallback as transformers reads them from the .model file.
    backend = LlamaTokenizer.from_pretrained(str(tokenizer_path.parent), vocab_file=str(tokenizer_path)).backend_tokenizer
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("\u2581"))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "\u2581"))
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = None
    # The generic class: transformers' LlamaTokenizer would rebuild its own pipeline on loading.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=sp.id_to_piece(sp.bos_id()), eos_token=sp.id_to_piece(sp.eos_id()),
        unk_token=sp.id_to_piece(sp.unk_id()), split_special_tokens=True, clean_up_tokenization_spaces=False,
    )
    check_tokenizer(tokenizer, sp, str(tokenizer_path))
    return tokenizer


def check_tokenizer(tokenizer, sp, source: str) -> None:
    """Refuse a Hugging Face tokenizer whose ids differ from SentencePiece's on the check texts."""
    from sentencepiece import sentencepiece_model_pb2

    for text in tokenizer_check_texts():
        ours, theirs = tokenizer.encode(text, add_special_tokens=False), sp.encode(text)
        if ours != theirs:
            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(sp.serialized_model_proto())
            spec = proto.normalizer_spec
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            raise WeightsError(
                f"{source}: the converted tokenizer would not give SentencePiece's ids. SentencePiece model: "
                f"normalisation rule {spec.name!r}, remove_extra_whitespaces={spec.remove_extra_whitespaces}, "
                f"add_dummy_prefix={spec.add_dummy_prefix}. On the text {text!r} they differ from piece {at}: "
                f"SentencePiece {[sp.id_to_piece(i) for i in theirs[at:at + 6]]}, converted "
                f"{tokenizer.convert_ids_to_tokens(ours[at:at + 6])}. The release uses LLaMA's tokenizer.model "
                "(rule 'identity'); pass that one with --tokenizer."
            )


def save_tokenizer(tokenizer, sentencepiece_path: Path, llm_dir: Path) -> None:
    """The Hugging Face form (what the model encodes with) and the SentencePiece model (for decoding)."""
    import shutil

    tokenizer.save_pretrained(llm_dir)
    shutil.copyfile(sentencepiece_path, llm_dir / SENTENCEPIECE_NAME)


def convert(
    base: Path,
    adapter: Path,
    out: Path,
    *,
    delta: Path | None = None,
    tokenizer: Path | None = None,
    imagebind: Path | None = None,
    dtype: torch.dtype = torch.float16,
    max_shard_bytes: int = 2 * 1024**3,
    placeholder: bool = False,
    progress: bool = True,
    custom_structure: bool = False,
    backbone: Backbone = RELEASE_BACKBONE,
) -> Path:
    """Convert and write everything; returns `out`. Checks all keys before writing anything.

    The adapter must have the release's structure (3 bind blocks, LoRA rank 16, reference section 5)
    unless `custom_structure`: then the bind block count, hidden width and LoRA rank are read
    from the file (for adapters trained on purpose with another structure). `backbone`: the base
    LLM's settings that its weights do not carry (demo/backbone.py), written into llm/config.json
    and recorded in imagebind_llm.json."""
    from safetensors.torch import save_file

    out = Path(out)
    base_ckpt = open_base(Path(base))
    delta_ckpt = MetaCheckpoint(Path(delta)) if delta else None
    shape = base_ckpt.shape
    if delta_ckpt is not None and delta_ckpt.shape != shape:
        raise WeightsError(f"the delta {delta} has shape {delta_ckpt.shape}, the base {base} has {shape}")
    adapter_state = load_adapter_checkpoint(Path(adapter))
    check_adapter_keys(adapter_state, shape.n_layers, custom_structure)
    if adapter_state["prefix_query.weight"].shape[1] != shape.dim:
        raise WeightsError(f"the adapter is for width {adapter_state['prefix_query.weight'].shape[1]}, the base LLaMA has {shape.dim}")
    check_adapter_shapes(adapter_state, shape, custom_structure)
    if backbone.key_value_heads(shape.n_heads) != shape.n_heads:
        raise WeightsError(f"the backbone asks for {backbone.kv_heads} key/value heads; conversion reads LLaMA-1 "
                           f"checkpoints, whose {shape.n_heads} heads each have their own keys and values")
    tokenizer_path = find_tokenizer(Path(base), tokenizer)
    hf_tokenizer = build_tokenizer(tokenizer_path)  # refuses, before anything is written, unless ids match

    llm_dir = out / LLM_DIR
    llm_dir.mkdir(parents=True, exist_ok=True)
    config = backbone.llama_config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.dim,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        rms_norm_eps=shape.norm_eps,
        attention_bias=True,  # carries the fine-tuned q/o biases (k/v held at zero)
        mlp_bias=True,  # carries the fine-tuned FFN biases
        dtype=str(dtype).removeprefix("torch."),
    )
    config.save_pretrained(llm_dir)
    _write_sharded(_llm_tensors(base_ckpt, delta_ckpt, adapter_state, dtype), llm_dir, max_shard_bytes, progress)
    save_tokenizer(hf_tokenizer, tokenizer_path, llm_dir)

    extra = injection_tensors(adapter_state, shape.n_layers, shape.n_heads)
    # The bind network runs once per request; keep it in the chosen dtype, the gates in fp32.
    save_file({k: (v if "gates" in k else v.to(dtype)).contiguous() for k, v in extra.items()}, str(out / ADAPTER_NAME))

    meta = {
        "format_version": FORMAT_VERSION,
        "llm": LLM_DIR,
        "adapter": ADAPTER_NAME,
        "imagebind": _relative_or_absolute(Path(imagebind), out) if imagebind else None,
        "placeholder": placeholder,  # True: random weights, answers meaningless (tiny preset)
        BACKBONE_KEY: backbone.to_dict(),
        "sources": {"base": str(base), "delta": str(delta) if delta else None, "adapter": str(adapter)},
    }
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return out


def _relative_or_absolute(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())
