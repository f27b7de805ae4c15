"""Zero-initialised gated injection of one conditioning vector into every LLaMA layer.

Reference section 3. For layer l, with F the bind network's output (B, D):

    a_l  = F + prefix_query[l]                                   (B, D)
    term = tanh(gate_l) (one scalar per head) * W_v_base a_l     (B, heads, head_dim)
    attn_out = attn_out + term     (same term for every token position), then o_proj.

Everything after F is linear and per-request, so the (B, L, D) table of terms is computed once
per request (`terms_for`) and added by a forward pre-hook on each layer's o_proj: the decoding
step pays one vector add per layer, nothing else. A transformers LlamaForCausalLM stays unchanged
otherwise, so quantised (bitsandbytes) layers and accelerate placement work as usual.

W_v_base: the release's injection uses the frozen base value projection, but our converted
checkpoint has the v LoRA folded into v_proj for speed. Since W_merged = W_base + B A, we get
W_base a = v_proj(a) - v_bias - B (A a); the LoRA factors of v are kept for this.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class GatedInjection(nn.Module):
    def __init__(self, num_layers: int, dim: int, num_heads: int, lora_rank: int):
        super().__init__()
        self.num_heads = num_heads
        self.prefix_query = nn.Parameter(torch.zeros(num_layers, dim))  # (L, D)
        self.gates = nn.Parameter(torch.zeros(num_layers, num_heads))  # (L, heads); zero = base LLM
        self.lora_v_a = nn.Parameter(torch.zeros(num_layers, lora_rank, dim))  # (L, r, D)
        self.lora_v_b = nn.Parameter(torch.zeros(num_layers, dim, lora_rank))  # (L, D, r)
        # Per-request terms, read by the o_proj hooks; None means "no injection". Thread-local so
        # concurrent requests never see each other's conditioning; callers enter `active` around
        # each forward pass (see generation.stream_tokens), never across a yield.
        self._local = threading.local()
        self._hooks: list = []

    @torch.no_grad()
    def terms_for(self, bind_output: torch.Tensor, llm: nn.Module) -> torch.Tensor:
        """(B, D) bind output -> (B, L, D) terms to add before each layer's o_proj."""
        layers = llm.model.layers
        # Hidden states run in the embedding's dtype; quantised layers expect that too.
        act_dtype = llm.model.embed_tokens.weight.dtype
        device = self.prefix_query.device
        batch, dim = bind_output.shape
        head_dim = dim // self.num_heads
        a_all = bind_output.to(device, torch.float32)[:, None, :] + self.prefix_query.float()  # (B, L, D)
        terms = []
        for index, layer in enumerate(layers):
            v_proj = layer.self_attn.v_proj
            a = a_all[:, index]  # (B, D)
            # W_v_merged a, through the layer itself so quantised weights work unchanged.
            v = v_proj(a.to(v_proj.weight.device, act_dtype)).float().to(device)  # (B, D)
            if getattr(v_proj, "bias", None) is not None:
                v = v - v_proj.bias.float().to(device)
            v = v - (a @ self.lora_v_a[index].float().T) @ self.lora_v_b[index].float().T  # (B, D): now W_v_base a
            gate = torch.tanh(self.gates[index].float())  # (heads,)
            term = gate[None, :, None] * v.view(batch, self.num_heads, head_dim)  # (B, heads, head_dim)
            terms.append(term.reshape(batch, dim))
        # Cast once here, not in the per-token hook (a no-op there when devices and dtypes agree).
        return torch.stack(terms, dim=1).to(act_dtype)  # (B, L, D)

    # --- hooks -------------------------------------------------------------------------------
    def attach(self, llm: nn.Module) -> None:
        """Register one pre-hook per layer's o_proj. Idempotent."""
        self.detach()
        for index, layer in enumerate(llm.model.layers):
            self._hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(self._make_hook(index)))

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def _make_hook(self, index: int):
        def add_term(module: nn.Module, args: tuple) -> tuple | None:
            terms = getattr(self._local, "terms", None)
            if terms is None:
                return None
            hidden = args[0]  # (B, T, D): attention output with heads flattened head-major
            term = terms[:, index, None, :].to(hidden.device, hidden.dtype)  # (B, 1, D): same for every position
            return (hidden + term, *args[1:])

        return add_term

    @contextmanager
    def active(self, terms: torch.Tensor | None) -> Iterator[None]:
        """Within the block, forward passes in this thread are conditioned on `terms`."""
        previous = getattr(self._local, "terms", None)
        self._local.terms = terms
        try:
            yield
        finally:
            self._local.terms = previous

