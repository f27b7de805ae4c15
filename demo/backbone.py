"""The base LLM, described once: what conversion writes, training builds, and loading reads.

The release's backbone is LLaMA-1 7B (reference sections 4-6): a 2,048-token context, rotary base
10,000, as many key/value heads as attention heads, BOS 1 / EOS 2 from a SentencePiece
`tokenizer.model`, and the Alpaca prompt template (demo/prompt.py). Sizes (width, layers, heads,
vocabulary) are not here: they are read from the checkpoint's tensors.

Conversion records the description in the converted folder's `imagebind_llm.json` ("backbone");
a folder converted before that (and the shipped pocket model) is read as `from_llm_config` of its
`llm/config.json` over the release's values, which gives the same description.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

TOKENIZER_KINDS = ("sentencepiece",)  # a LLaMA tokenizer.model, kept beside its Hugging Face form
PROMPT_TEMPLATES = ("alpaca",)  # demo/prompt.py: the release's "### Instruction / ### Response"
FOLDER_KEY = "backbone"  # its key in a converted folder's imagebind_llm.json


@dataclass(frozen=True)
class Backbone:
    """The settings of the base LLM that its weights do not carry.

    context_length: tokens of prompt plus answer the model was trained on (max_position_embeddings).
    rope_theta: the rotary embedding's base.
    kv_heads: key/value heads; None = as many as attention heads (LLaMA-1). Fewer is grouped-query
        attention (the injection supports it; the release has none).
    bos_token_id / eos_token_id: the ids the tokenizer gives its begin / end markers.
    tokenizer: the tokenizer kind (TOKENIZER_KINDS).
    prompt_template: the prompt format the adapter was trained with (PROMPT_TEMPLATES).
    """

    context_length: int = 2048
    rope_theta: float = 10000.0
    kv_heads: int | None = None
    bos_token_id: int = 1
    eos_token_id: int = 2
    tokenizer: str = "sentencepiece"
    prompt_template: str = "alpaca"

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"unknown tokenizer kind {self.tokenizer!r}; known: {', '.join(TOKENIZER_KINDS)}")
        if self.prompt_template not in PROMPT_TEMPLATES:
            raise ValueError(f"unknown prompt template {self.prompt_template!r}; known: {', '.join(PROMPT_TEMPLATES)}")
        if not (isinstance(self.context_length, int) and self.context_length > 0):
            raise ValueError(f"context_length must be a positive whole number, got {self.context_length!r}")
        if self.kv_heads is not None and not (isinstance(self.kv_heads, int) and self.kv_heads > 0):
            raise ValueError(f"kv_heads must be a positive whole number or None, got {self.kv_heads!r}")

    def key_value_heads(self, heads: int) -> int:
        """Key/value heads for a model of `heads` attention heads (which they must divide)."""
        kv = heads if self.kv_heads is None else self.kv_heads
        if heads % kv:
            raise ValueError(f"{kv} key/value heads do not divide {heads} attention heads")
        return kv

    def llama_config(self, *, vocab_size: int, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
                     num_attention_heads: int, rms_norm_eps: float = 1e-5, **extra: Any):
        """A transformers LlamaConfig of these sizes with this backbone's settings; `extra` adds or
        overrides keyword arguments (attention_bias, dtype, ...)."""
        from transformers import LlamaConfig

        return LlamaConfig(**{
            "vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
            "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
            "num_key_value_heads": self.key_value_heads(num_attention_heads), "hidden_act": "silu",
            "max_position_embeddings": self.context_length, "rms_norm_eps": rms_norm_eps, "rope_theta": self.rope_theta,
            "tie_word_embeddings": False, "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            **extra,
        })

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Backbone:
        """Saved values over the release's; unknown keys are refused, naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown backbone settings {unknown}; known: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_llm_config(cls, config: Mapping[str, Any], base: Backbone | None = None) -> Backbone:
        """The description of a converted folder that records none: what its llm/config.json says,
        the rest (tokenizer kind, prompt template) from `base` (the release's by default)."""
        base = base or RELEASE
        heads = config.get("num_attention_heads")
        kv = config.get("num_key_value_heads")
        return replace(
            base,
            context_length=int(config.get("max_position_embeddings", base.context_length)),
            rope_theta=float(_rope_theta(config) or base.rope_theta),
            kv_heads=None if kv is None or kv == heads else int(kv),
            bos_token_id=int(config.get("bos_token_id", base.bos_token_id)),
            eos_token_id=int(config.get("eos_token_id", base.eos_token_id)),
        )


RELEASE = Backbone()  # LLaMA-1 7B as ImageBind-LLM was trained on it


def _rope_theta(config: Mapping[str, Any]) -> float | None:
    """config.json's rotary base: transformers 5 writes it under "rope_parameters", 4.x at the top."""
    parameters = config.get("rope_parameters")
    return (parameters.get("rope_theta") if isinstance(parameters, Mapping) else None) or config.get("rope_theta")


def read_backbone(meta: Mapping[str, Any], llm_config: Mapping[str, Any]) -> Backbone:
    """A converted folder's backbone: the one recorded in `meta` (imagebind_llm.json), else derived
    from its `llm_config` (llm/config.json)."""
    recorded = meta.get(FOLDER_KEY)
    if recorded is None:
        return Backbone.from_llm_config(llm_config)
    if not isinstance(recorded, Mapping):
        raise ValueError(f"{FOLDER_KEY!r} must be a JSON object, got {type(recorded).__name__}")
    return Backbone.from_dict(recorded)
