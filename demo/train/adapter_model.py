"""The model being trained: the frozen base LLaMA with the adapter UNFOLDED on top.

The converted folder the pipeline loads has the adapter folded into the LLaMA weights
(`demo/convert.py`); training needs it apart, so that only the adapter learns and so that it can
be written in the release's `7B.pth` layout. Here:

  * base LLaMA: a transformers LlamaForCausalLM read through `demo.convert.open_base` (Hugging
    Face layout and names), every base tensor frozen;
  * each of the 7 projections of a layer is a `LoRAProjection`: y = W x + B (A x) + b with W the
    frozen base weight (reference section 4: LoRA rank 16, scale 1; biases on q, o, w1, w2, w3);
  * RMSNorm weights of every layer and the final norm are trainable;
  * bind network, prefix_query and the per-head gates make the injection of reference section 3,
    through the same code as inference (`demo.injection`: `gated_term` and the attention wrapper
    that adds the terms before o_proj, so o's LoRA sees them), W_v the BASE value weight (no
    LoRA, no bias), tanh(gate) per head, the same term for every position.

Every trainable tensor is held in the official layout and dtype fp32, under a table keyed by its
official `7B.pth` name: export and resume are plain copies, bit for bit. The only layout change
happens in `LoRAProjection.forward`: q/k outputs live in Hugging Face's rotary order, so q's bias
and the B factors of q and k are permuted there (reference section 6), exactly as convert.py does
when folding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..backbone import RELEASE as RELEASE_BACKBONE
from ..backbone import Backbone
from ..bind_network import BindNetwork, rename_official_bind_key
from ..convert import (
    ADAPTER_GATE,
    ADAPTER_NORMS,
    ADAPTER_PROJECTIONS,
    BaseCheckpoint,
    check_adapter_keys,
    expected_adapter_keys,
    rotary_permute,
)
from ..errors import WeightsError
from ..injection import TERMS_KWARG, gated_term, use_gated_attention

LORA_RANK = 16
BIND_BLOCKS = 3
STAGES = ("stage1", "stage2")


def stage_of(key: str) -> str:
    """Which stage trains an official adapter key: stage 1 the bind network, prefix and gates;
    stage 2 everything inside LLaMA (norms, biases, LoRA). Reference section 11."""
    if key.startswith("llama.") and not key.endswith(ADAPTER_GATE):
        return "stage2"
    return "stage1"


class LoRAProjection(nn.Module):
    """A frozen base projection plus a trainable bias and rank-r LoRA, in official layout."""

    def __init__(self, base: nn.Linear, rank: int, bias: bool, rotary_heads: int | None):
        super().__init__()
        self.weight = nn.Parameter(base.weight.detach(), requires_grad=False)  # (out, in), frozen
        out_dim, in_dim = self.weight.shape
        self.lora_a = nn.Parameter(torch.empty(rank, in_dim))  # official *_l1.weight
        self.lora_b = nn.Parameter(torch.zeros(out_dim, rank))  # official *_l2.weight, zero: starts as the base
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's default, as the release's l1
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None
        self.rotary_heads = rotary_heads  # q/k: official rows are Meta's interleaved rotary order

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, in) -> (B, T, out)
        lora_b, bias = self.lora_b, self.bias
        if self.rotary_heads:
            lora_b = rotary_permute(lora_b, self.rotary_heads)
            bias = None if bias is None else rotary_permute(bias, self.rotary_heads)
        y = F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_a), lora_b)  # W x + B (A x), scale 1
        return y if bias is None else y + bias


class AdapterModel(nn.Module):
    """Frozen LLaMA + trainable adapter; `forward(ids, mask, embeddings, labels)` -> loss, logits."""

    def __init__(self, llm: nn.Module, embed_dim: int, lora_rank: int = LORA_RANK):
        super().__init__()
        config = llm.config
        self.llm = llm.requires_grad_(False)
        dim, n_layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
        self.num_heads = heads
        self.bind = BindNetwork(embed_dim, dim, 4 * dim, BIND_BLOCKS)  # the release: 16384 = 4 x 4096
        self.prefix_query = nn.Parameter(torch.randn(n_layers, dim))  # nn.Embedding's N(0, 1), as released
        self.gates = nn.ParameterList(nn.Parameter(torch.zeros(1, heads, 1, 1)) for _ in range(n_layers))  # zero: base LLM
        # official key -> the parameter holding it
        self.official: dict[str, nn.Parameter] = {"prefix_query.weight": self.prefix_query}
        for name, param in self.bind.named_parameters():
            self.official[_official_bind_key(name)] = param
        self.official["llama.norm.weight"] = llm.model.norm.weight
        for i, layer in enumerate(llm.model.layers):
            prefix = f"llama.layers.{i}."
            self.official[prefix + ADAPTER_GATE] = self.gates[i]
            for hf_name, official_name in ADAPTER_NORMS.items():
                self.official[prefix + official_name] = getattr(layer, hf_name).weight
            for path, (bias_key, lora, rotary) in ADAPTER_PROJECTIONS.items():
                parent_name, child_name = path.split(".")
                parent = getattr(layer, parent_name)
                projection = LoRAProjection(getattr(parent, child_name), lora_rank, bias_key is not None, heads if rotary else None)
                setattr(parent, child_name, projection)
                self.official[prefix + lora + "_l1.weight"] = projection.lora_a
                self.official[prefix + lora + "_l2.weight"] = projection.lora_b
                if bias_key:
                    self.official[prefix + bias_key] = projection.bias
        check_adapter_keys(dict(self.official), n_layers)  # the table covers exactly the release's keys
        use_gated_attention(llm)  # the forward takes injection_terms=(B, L, D)

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_base(
        cls,
        base: BaseCheckpoint,
        embed_dim: int,
        *,
        delta: BaseCheckpoint | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        seed: int = 0,
        backbone: Backbone = RELEASE_BACKBONE,
    ) -> "AdapterModel":
        """The base LLaMA (+ delta) in `dtype`, a fresh adapter in fp32 (seeded). `backbone`: the
        settings the weights do not carry (context, rope base, ...; demo/backbone.py), the ones
        `demo.convert` records in the converted folder."""
        from accelerate import init_empty_weights
        from transformers import LlamaForCausalLM

        shape = base.shape
        config = backbone.llama_config(
            vocab_size=shape.vocab_size, hidden_size=shape.dim, intermediate_size=shape.intermediate,
            num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads, rms_norm_eps=shape.norm_eps,
            attention_bias=False, mlp_bias=False,  # the adapter's biases live in LoRAProjection
        )
        with init_empty_weights():  # no random init of billions of weights that are replaced next
            llm = LlamaForCausalLM(config)
        state = {}
        for key in base.hf_keys():
            tensor = base.get(key).float()
            if delta is not None:
                tensor = tensor + delta.get(key).float()
            # Norms are trainable: fp32 whatever the base dtype. The rest is frozen base.
            state[key] = tensor.to(torch.float32 if "norm" in key else dtype)
        llm.load_state_dict(state, strict=True, assign=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(llm.eval(), embed_dim)
        return model.to(device)

    def load_official(self, state: dict[str, torch.Tensor], allow_stage1_only: bool = False) -> list[str]:
        """Copy an official-layout adapter in. Every key must match; with `allow_stage1_only`, a
        file holding only the stage-1 keys (bind, prefix, gates) is accepted and the LLaMA-side
        keys keep their fresh values. Returns the keys left fresh (for the caller to log)."""
        unexpected = sorted(set(state) - set(self.official))
        missing = sorted(set(self.official) - set(state))
        if missing and allow_stage1_only and all(stage_of(k) == "stage2" for k in missing):
            pass
        elif missing or unexpected:
            raise WeightsError(f"adapter checkpoint does not match this model: missing {missing[:8]}, unexpected {unexpected[:8]}")
        wrong = sorted(k for k in state if state[k].shape != self.official[k].shape)
        if wrong:
            raise WeightsError(f"adapter checkpoint has wrong shapes for {wrong[:8]} (another model size?)")
        with torch.no_grad():
            for key, tensor in state.items():
                self.official[key].copy_(tensor)
        return missing

    def official_state(self) -> dict[str, torch.Tensor]:
        """The adapter as `7B.pth['model']`: official names and shapes, fp32 (gates too, so a
        resumed or converted model is exactly the trained one; the release stores them in fp16)."""
        return {key: param.detach().float().cpu().clone() for key, param in sorted(self.official.items())}

    # --- training helpers -------------------------------------------------------------------
    def set_stage(self, stage: str) -> None:
        """Only the stage's parameters require gradients; the rest of the adapter is frozen."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
        for key, param in self.official.items():
            param.requires_grad_(stage_of(key) == stage)

    def trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(official key, parameter) of what the current stage trains, in a fixed order."""
        for key, param in sorted(self.official.items()):
            if param.requires_grad:
                yield key, param

    # --- forward ----------------------------------------------------------------------------
    def injection_terms(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, E) ImageBind embeddings -> (B, L, D) terms added before each o_proj."""
        bound = self.bind(embeddings.to(self.prefix_query.device, torch.float32))  # (B, D)
        terms = []
        for i, layer in enumerate(self.llm.model.layers):
            a = bound + self.prefix_query[i]  # (B, D): a_l = F + prefix_query[l]
            v = F.linear(a, layer.self_attn.v_proj.weight.to(a.dtype))  # (B, kv_dim): base W_v only
            terms.append(gated_term(v, self.gates[i].float().view(-1), layer.self_attn.head_dim))  # (B, D)
        return torch.stack(terms, dim=1)  # (B, L, D)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor | None = None
    ):
        """input_ids (B, T), embeddings (B, E) -> transformers CausalLMOutput (loss over labels
        != -100, mean over those tokens, when labels are given)."""
        terms = self.injection_terms(embeddings)  # (B, L, D)
        return self.llm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False, **{TERMS_KWARG: terms})


def _official_bind_key(ours: str) -> str:
    """Our bind-network parameter name -> its official key (inverse of rename_official_bind_key)."""
    for official in expected_adapter_keys(0, BIND_BLOCKS):
        if rename_official_bind_key(official) == ours:
            return official
    raise KeyError(ours)
