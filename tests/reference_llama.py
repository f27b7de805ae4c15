"""An independent forward pass of the released ImageBind-LLM text path, straight from the math.

Written for the tests from reference sections 2-4, on the RAW official-format tensors (Meta base
+ delta, `7B.pth` adapter): interleaved (complex) rotary, unmerged LoRA, biases, the adapter term
added to the attention output before W_o. It shares no code with `demo/`, so agreement between
the two checks the conversion (permutations, folding) and the injection together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def lora_linear(x, weight, bias, l1, l2):
    y = x @ weight.T + (x @ l1.T) @ l2.T  # LoRA scale 1
    return y + bias if bias is not None else y


def bind_network(adapter: dict, embedding: torch.Tensor) -> torch.Tensor:
    """(B, E) -> (B, D), the stable-release bridge."""
    x = embedding @ adapter["image_bind_proj.weight"].T + adapter["image_bind_proj.bias"]
    k = 1
    while f"image_bind_norm_{k}.weight" in adapter:
        n = rms_norm(x, adapter[f"image_bind_norm_{k}.weight"], 1e-6)
        h = F.silu(n @ adapter[f"image_bind_f1_{k}.weight"].T) * (n @ adapter[f"image_bind_f3_{k}.weight"].T)
        x = x + h @ adapter[f"image_bind_f2_{k}.weight"].T
        k += 1
    return x


def rotary(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Meta's rotary on interleaved pairs. x: (B, T, H, hd)."""
    b, t, h, hd = x.shape
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64)[: hd // 2] / hd)
    angles = torch.outer(torch.arange(t, dtype=torch.float64), freqs)  # (T, hd/2)
    rot = torch.polar(torch.ones_like(angles), angles)  # (T, hd/2) complex
    xc = torch.view_as_complex(x.reshape(b, t, h, hd // 2, 2))
    return torch.view_as_real(xc * rot[None, :, None, :]).reshape(b, t, h, hd)


def forward(base: dict, adapter: dict, n_heads: int, tokens: torch.Tensor, embedding: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """tokens (B, T) int64, embedding (B, E) or None (no injection) -> logits (B, T, V), float64."""
    base = {k: v.double() for k, v in base.items()}
    adapter = {k: v.double() for k, v in adapter.items()}
    x = base["tok_embeddings.weight"][tokens]  # (B, T, D)
    b, t, d = x.shape
    hd = d // n_heads
    visual = bind_network(adapter, embedding.double()) if embedding is not None else None  # (B, D)
    mask = torch.full((t, t), float("-inf"), dtype=torch.float64).triu(1)
    i = 0
    while f"layers.{i}.attention.wq.weight" in base:
        L, A = f"layers.{i}.", f"llama.layers.{i}."

        def proj(inp, name, bias_key, lora):
            bias = adapter.get(A + bias_key) if bias_key else None
            return lora_linear(inp, base[L + name], bias, adapter[A + lora + "_l1.weight"], adapter[A + lora + "_l2.weight"])

        h = rms_norm(x, adapter[A + "attention_norm.weight"], eps)
        q = proj(h, "attention.wq.weight", "attention.wq.bias", "attention.lora_wq").view(b, t, n_heads, hd)
        k = proj(h, "attention.wk.weight", None, "attention.lora_wk").view(b, t, n_heads, hd)
        v = proj(h, "attention.wv.weight", None, "attention.lora_wv").view(b, t, n_heads, hd)
        q, k = rotary(q), rotary(k)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        scores = q @ k.transpose(-1, -2) / hd**0.5 + mask
        out = torch.softmax(scores, dim=-1) @ v  # (B, H, T, hd)
        if visual is not None:
            a = visual + adapter["prefix_query.weight"][i]  # (B, D)
            av = (a @ base[L + "attention.wv.weight"].T).view(b, n_heads, 1, hd)  # base W_v only
            gate = torch.tanh(adapter[A + "attention.gate"]).view(1, n_heads, 1, 1)
            out = out + gate * av
        out = out.transpose(1, 2).reshape(b, t, d)
        x = x + proj(out, "attention.wo.weight", "attention.wo.bias", "attention.lora_wo")
        h = rms_norm(x, adapter[A + "ffn_norm.weight"], eps)
        gate_ = proj(h, "feed_forward.w1.weight", "feed_forward.w1.bias", "feed_forward.lora_w1")
        up = proj(h, "feed_forward.w3.weight", "feed_forward.w3.bias", "feed_forward.lora_w3")
        x = x + proj(F.silu(gate_) * up, "feed_forward.w2.weight", "feed_forward.w2.bias", "feed_forward.lora_w2")
        i += 1
    x = rms_norm(x, adapter["llama.norm.weight"], eps)
    return x @ base["output.weight"].T


def rotary_half_split(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotary in the Hugging Face layout: pairs are (i, i + hd/2), not interleaved. x: (B, T, H, hd)."""
    b, t, h, hd = x.shape
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # (hd/2,)
    angles = torch.outer(torch.arange(t, dtype=torch.float64), freqs)  # (T, hd/2)
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def forward_hf_gqa(
    state: dict, n_heads: int, n_kv_heads: int, tokens: torch.Tensor, injection: dict | None, eps: float = 1e-5
) -> torch.Tensor:
    """A Hugging Face-layout Llama state dict (biases on q/k/v/o optional) with grouped-query
    attention (n_kv_heads < n_heads), plus the gated injection given by the converted-layout
    tensors `injection` = {bound (B, D), prefix_query (L, D), gates (L, heads), lora_v_a (L, r, D),
    lora_v_b (L, kv_dim, r)} -> logits (B, T, V), float64. Written from the math, with the K/V
    heads shared by groups of n_heads / n_kv_heads consecutive query heads."""
    s = {k: v.double() for k, v in state.items()}
    x = s["model.embed_tokens.weight"][tokens]  # (B, T, D)
    b, t, d = x.shape
    hd = d // n_heads
    group = n_heads // n_kv_heads
    mask = torch.full((t, t), float("-inf"), dtype=torch.float64).triu(1)
    i = 0
    while f"model.layers.{i}.self_attn.q_proj.weight" in s:
        p = f"model.layers.{i}."

        def lin(inp, name):
            y = inp @ s[p + name + ".weight"].T
            return y + s[p + name + ".bias"] if p + name + ".bias" in s else y

        h = rms_norm(x, s[p + "input_layernorm.weight"], eps)
        q = rotary_half_split(lin(h, "self_attn.q_proj").view(b, t, n_heads, hd))
        k = rotary_half_split(lin(h, "self_attn.k_proj").view(b, t, n_kv_heads, hd))
        v = lin(h, "self_attn.v_proj").view(b, t, n_kv_heads, hd)
        out = torch.empty(b, n_heads, t, hd, dtype=torch.float64)
        for head in range(n_heads):  # one query head at a time, reading its group's K/V head
            kv = head // group
            qh, kh, vh = q[:, :, head], k[:, :, kv], v[:, :, kv]  # (B, T, hd)
            out[:, head] = torch.softmax(qh @ kh.transpose(-1, -2) / hd**0.5 + mask, dim=-1) @ vh
            if injection is not None:
                a = injection["bound"].double() + injection["prefix_query"][i].double()  # (B, D)
                w_base = s[p + "self_attn.v_proj.weight"] - injection["lora_v_b"][i].double() @ injection["lora_v_a"][i].double()
                av = (a @ w_base.T).view(b, n_kv_heads, hd)[:, kv]  # (B, hd), no bias
                out[:, head] += torch.tanh(injection["gates"][i, head].double()) * av[:, None, :]
        x = x + lin(out.transpose(1, 2).reshape(b, t, d), "self_attn.o_proj")
        h = rms_norm(x, s[p + "post_attention_layernorm.weight"], eps)
        x = x + lin(F.silu(lin(h, "mlp.gate_proj")) * lin(h, "mlp.up_proj"), "mlp.down_proj")
        i += 1
    x = rms_norm(x, s["model.norm.weight"], eps)
    return x @ s["lm_head.weight"].T
