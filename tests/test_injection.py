"""The gated injection as an explicit batched input: per-row terms, grouped-query attention."""

from __future__ import annotations

import torch

import reference_llama
from demo.injection import GatedInjection, use_gated_attention


def test_a_batch_of_three_conditionings_gives_each_row_its_own_logits(tiny_model):
    generator = torch.Generator().manual_seed(0)
    vocab = tiny_model.llm.config.vocab_size
    tokens = torch.randint(3, vocab, (3, 12), generator=generator)  # (3, T): three different prompts
    embeddings = torch.randn(3, tiny_model.bind.proj.in_features, generator=generator)
    terms = tiny_model.conditioning_terms(embeddings)  # (3, L, D)
    with torch.no_grad():
        batch = tiny_model.llm(input_ids=tokens, injection_terms=terms).logits  # (3, T, V)
        for row in range(3):
            alone = tiny_model.llm(input_ids=tokens[row : row + 1], injection_terms=terms[row : row + 1]).logits
            assert (batch[row] - alone[0]).abs().max().item() < 1e-5, row
        # Rows really differ: each row's conditioning moved its logits.
        swapped = tiny_model.llm(input_ids=tokens, injection_terms=terms.flip(0)).logits
    assert (swapped[0] - batch[0]).abs().max().item() > 1e-3


def _random_gqa(heads: int = 4, kv_heads: int = 2):
    """A random fp32 Llama with grouped-query attention and biases, and a random injection."""
    from transformers import LlamaForCausalLM

    from demo.backbone import Backbone

    config = Backbone(context_length=64, kv_heads=kv_heads).llama_config(
        vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=heads,
        attention_bias=True,
    )
    generator = torch.Generator().manual_seed(0)
    llm = LlamaForCausalLM(config).eval()
    injection = GatedInjection(2, 64, heads, lora_rank=3, kv_dim=kv_heads * 16)
    with torch.no_grad():
        for name, param in [*llm.named_parameters(), *injection.named_parameters()]:
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.1 * noise if "norm" in name else (0.5 if name == "gates" else 0.08) * noise)
    use_gated_attention(llm)
    return llm, injection


def test_grouped_query_attention_agrees_with_an_independent_reference():
    llm, injection = _random_gqa()
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 96, (2, 9), generator=generator)
    bound = torch.randn(2, 64, generator=generator)  # (B, D): the bind network's output
    terms = injection.terms_for(bound, llm)  # (2, L, D)
    tensors = {name: p.detach() for name, p in injection.named_parameters()}
    expected = reference_llama.forward_hf_gqa(llm.state_dict(), 4, 2, tokens, {"bound": bound, **tensors})
    with torch.no_grad():
        got = llm(input_ids=tokens, injection_terms=terms).logits
        plain = llm(input_ids=tokens).logits
    assert (got.double() - expected).abs().max().item() < 1e-5
    plain_expected = reference_llama.forward_hf_gqa(llm.state_dict(), 4, 2, tokens, None)
    assert (plain.double() - plain_expected).abs().max().item() < 1e-5
    assert (expected - plain_expected).abs().max().item() > 1e-2  # the injection is part of what matched
