"""Zero-initialised gated injection of one conditioning vector into every LLaMA layer.

Reference section 3. For layer l, with F the bind network's output (B, D):

    a_l  = F + prefix_query[l]                                       (B, D)
    term = tanh(gate_l) (one scalar per head) * W_v_base a_l         (B, heads, head_dim)
    attn_out = attn_out + term     (same term for every token position), then o_proj.

Everything after F is linear and per-request, so the (B, L, D) table of terms is computed once
per request and passed to the model's forward as an explicit input, one row per batch row:

    llm(input_ids, ..., injection_terms=terms)       # terms (B, L, D); None = plain LLaMA

How it reaches the layers: transformers 5 forwards extra keyword arguments of
`LlamaForCausalLM.forward` down to each layer's attention function, which it looks up by name in
its `AttentionInterface` registry. `use_gated_attention(llm)` registers a wrapper of the model's
own attention function (sdpa or eager) that adds `injection_terms[:, layer]` to the attention
output before o_proj; nothing else in the Llama changes, so quantised (bitsandbytes) layers,
accelerate placement and torch.compile work as usual, and there is no per-thread or per-call
state. Training (`demo/train/adapter_model.py`) uses the same wrapper and `gated_term`.

Grouped-query attention: W_v gives one vector per K/V head; query head h reads K/V head
h // (heads / kv_heads) (transformers' repeat_kv), so its term is that K/V head's vector.

W_v_base: the release's injection uses the frozen base value projection, but our converted
checkpoint has the v LoRA folded into v_proj for speed. Since W_merged = W_base + B A, we get
W_base a = v_proj(a) - v_bias - B (A a); the LoRA factors of v are kept for this.
"""

from __future__ import annotations

import torch
from torch import nn

TERMS_KWARG = "injection_terms"  # the forward's keyword argument: (B, L, D) or None
_PREFIX = "imagebind_"  # registered name: _PREFIX + the base attention implementation


def gated_term(v_base: torch.Tensor, gate: torch.Tensor, head_dim: int) -> torch.Tensor:
    """One layer's term: (B, kv_heads * head_dim) base value projection of a_l and (heads,) raw
    gates -> (B, heads * head_dim), laid out like the attention output before o_proj."""
    batch = v_base.shape[0]
    v = v_base.view(batch, -1, head_dim)  # (B, kv_heads, head_dim)
    groups = gate.shape[0] // v.shape[1]  # query heads per K/V head
    if groups > 1:
        v = v.repeat_interleave(groups, dim=1)  # (B, heads, head_dim), as repeat_kv orders them
    return (torch.tanh(gate)[None, :, None] * v).reshape(batch, -1)  # (B, heads * head_dim)


def _gated_attention(base):
    """Wrap a transformers attention function: add this layer's term to its output."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        terms = kwargs.pop(TERMS_KWARG, None)
        out, weights = base(module, query, key, value, attention_mask, **kwargs)  # out: (B, T, heads, head_dim)
        if terms is not None:
            batch, _, heads, head_dim = out.shape
            term = terms[:, module.layer_idx].to(out.device, out.dtype)  # (B, D): the same for every position
            out = out + term.view(batch, 1, heads, head_dim)
        return out, weights

    return attention


def use_gated_attention(llm: nn.Module) -> None:
    """Make `llm` (a transformers Llama) accept `injection_terms=`. Idempotent; without terms
    the forward is exactly the plain model's."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    current = llm.config._attn_implementation or "eager"
    if current.startswith(_PREFIX):
        return
    if current != "eager" and current not in ALL_ATTENTION_FUNCTIONS:
        raise ValueError(f"attention implementation {current!r} is not registered in transformers")
    if current == "eager":
        from transformers.models.llama.modeling_llama import eager_attention_forward as base
    else:
        base = ALL_ATTENTION_FUNCTIONS[current]
    name = _PREFIX + current
    AttentionInterface.register(name, _gated_attention(base))
    # The causal mask is built for the base implementation (the wrapper changes no mask format).
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    llm.config._attn_implementation = name


class GatedInjection(nn.Module):
    """The injection's weights for inference (converted layout) and the per-request terms."""

    def __init__(self, num_layers: int, dim: int, num_heads: int, lora_rank: int, kv_dim: int | None = None):
        super().__init__()
        kv_dim = dim if kv_dim is None else kv_dim  # kv_heads * head_dim: smaller than dim under GQA
        self.num_heads = num_heads
        self.prefix_query = nn.Parameter(torch.zeros(num_layers, dim))  # (L, D)
        self.gates = nn.Parameter(torch.zeros(num_layers, num_heads))  # (L, heads); zero = base LLM
        self.lora_v_a = nn.Parameter(torch.zeros(num_layers, lora_rank, dim))  # (L, r, D)
        self.lora_v_b = nn.Parameter(torch.zeros(num_layers, kv_dim, lora_rank))  # (L, kv_dim, r)

    @torch.no_grad()
    def terms_for(self, bind_output: torch.Tensor, llm: nn.Module) -> torch.Tensor:
        """(B, D) bind output -> (B, L, D) terms to pass as `injection_terms`."""
        # Hidden states run in the embedding's dtype; quantised layers expect that too.
        act_dtype = llm.model.embed_tokens.weight.dtype
        device = self.prefix_query.device
        a_all = bind_output.to(device, torch.float32)[:, None, :] + self.prefix_query.float()  # (B, L, D)
        terms = []
        for index, layer in enumerate(llm.model.layers):
            v_proj = layer.self_attn.v_proj
            a = a_all[:, index]  # (B, D)
            # W_v_merged a, through the layer itself so quantised weights work unchanged.
            v = v_proj(a.to(v_proj.weight.device, act_dtype)).float().to(device)  # (B, kv_dim)
            if getattr(v_proj, "bias", None) is not None:
                v = v - v_proj.bias.float().to(device)
            v = v - (a @ self.lora_v_a[index].float().T) @ self.lora_v_b[index].float().T  # (B, kv_dim): W_v_base a
            terms.append(gated_term(v, self.gates[index].float(), layer.self_attn.head_dim))
        # Cast once here, not per token (a no-op in the attention wrapper when dtypes agree).
        return torch.stack(terms, dim=1).to(act_dtype)  # (B, L, D)
