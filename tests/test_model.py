"""The gated LLM against an independent implementation of the release's forward pass."""

from __future__ import annotations

import pytest
import torch

import reference_llama
from demo.config import GenerationConfig
from demo.convert import load_adapter_checkpoint
from demo.generation import GenerationState, stream_tokens
from demo.model import ImageBindLLM
from demo.prompt import STOP_STRINGS, format_prompt


def _official(release):
    base = torch.load(release.llama_dir / "consolidated.00.pth", weights_only=True)
    delta = torch.load(release.delta_dir / "consolidated.00.pth", weights_only=True)
    base = {k: v + delta[k] if k in delta else v for k, v in base.items()}
    return base, load_adapter_checkpoint(release.adapter)


def _tokens(model, text="What is in this picture? Describe it."):
    return torch.tensor([[1] + model.tokenizer.encode(format_prompt(text), add_special_tokens=False)])


def test_matches_reference_forward_with_injection(tiny_release, tiny_model):
    base, adapter = _official(tiny_release)
    tokens = _tokens(tiny_model)
    embedding = torch.randn(2, adapter["image_bind_proj.weight"].shape[1], generator=torch.Generator().manual_seed(1))
    expected = reference_llama.forward(base, adapter, n_heads=4, tokens=tokens.repeat(2, 1), embedding=embedding)
    terms = tiny_model.conditioning_terms(embedding)  # (2, L, D)
    with torch.no_grad():
        logits = tiny_model.llm(input_ids=tokens.repeat(2, 1), injection_terms=terms).logits
    diff = (logits.double() - expected).abs().max().item()
    assert diff < 1e-4, diff
    # The injection matters: without it the logits move far more than the tolerance.
    without = reference_llama.forward(base, adapter, n_heads=4, tokens=tokens.repeat(2, 1), embedding=None)
    assert (without - expected).abs().max().item() > 1e-2
    with torch.no_grad():
        plain = tiny_model.llm(input_ids=tokens.repeat(2, 1)).logits
    assert (plain.double() - without).abs().max().item() < 1e-4


def test_zero_gates_equal_plain_llama(tiny_converted):
    model = ImageBindLLM.from_pretrained(tiny_converted, device="cpu")
    tokens = _tokens(model)
    with torch.no_grad():
        plain = model.llm(input_ids=tokens).logits
        model.injection.gates.zero_()
        terms = model.conditioning_terms(torch.randn(1, model.bind.proj.in_features))
        gated = model.llm(input_ids=tokens, injection_terms=terms).logits
    assert torch.equal(plain, gated)


def test_terms_are_computed_once_per_request_not_per_token(tiny_model, monkeypatch):
    calls = []
    original = tiny_model.injection.terms_for
    monkeypatch.setattr(tiny_model.injection, "terms_for", lambda *a: calls.append(1) or original(*a))
    terms = tiny_model.conditioning_terms(torch.randn(1, tiny_model.bind.proj.in_features))
    ids = _tokens(tiny_model)[0].tolist()
    list(stream_tokens(tiny_model.llm, tiny_model.tokenizer, ids, GenerationConfig(max_new_tokens=8, temperature=0), GenerationState(), terms=terms))
    assert len(calls) == 1


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_generates_with_injection(tiny_converted, quantization):
    model = ImageBindLLM.from_pretrained(tiny_converted, device="cpu", quantization=quantization)
    tokens = _tokens(model)
    terms = model.conditioning_terms(torch.randn(1, model.bind.proj.in_features))
    with torch.no_grad():
        plain = model.llm(input_ids=tokens).logits
        gated = model.llm(input_ids=tokens, injection_terms=terms).logits
    assert (plain - gated).abs().max() > 1e-3  # the injection reaches the quantised layers
    state = GenerationState()
    config = GenerationConfig(max_new_tokens=12, temperature=0)
    text = "".join(stream_tokens(model.llm, model.tokenizer, tokens[0].tolist(), config, state, STOP_STRINGS, terms=terms))
    assert text == state.text and (state.token_ids or state.finish_reason == "eos")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loads_and_stays_close(tiny_converted, tiny_model, dtype):
    model = ImageBindLLM.from_pretrained(tiny_converted, device="cpu", dtype=dtype)
    assert model.llm.model.embed_tokens.weight.dtype == getattr(torch, dtype)
    tokens = _tokens(model)
    embedding = torch.randn(1, model.bind.proj.in_features, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        half = model.llm(input_ids=tokens, injection_terms=model.conditioning_terms(embedding)).logits.float()
        full = tiny_model.llm(input_ids=tokens, injection_terms=tiny_model.conditioning_terms(embedding)).logits
    assert (half - full).abs().max() < 0.05 * full.abs().max()


def _mapped_ranges(suffix: str = ".safetensors") -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and parts[5].endswith(suffix):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_cpu_weights_live_in_ordinary_memory_not_in_the_mapped_file(tiny_converted, tiny_model):
    model = ImageBindLLM.from_pretrained(tiny_converted, device="cpu")
    ranges = _mapped_ranges()
    mapped = [name for name, p in model.named_parameters() if any(a <= p.data_ptr() < b for a, b in ranges)]
    assert not mapped
    tokens = _tokens(model)
    with torch.no_grad():  # the same numbers as before the copy (the session's model, loaded the same way)
        assert torch.equal(model.llm(input_ids=tokens).logits, tiny_model.llm(input_ids=tokens).logits)


def test_int8_weight_only_stays_close_and_compiles(tiny_converted, tiny_model):
    """torchao int8 weight-only: logits near fp32, and the engine's static compiled path runs it
    (aot_eager here; inductor fuses the dequantisation on a GPU, measured there)."""
    from demo.engine import Engine, Request

    model = ImageBindLLM.from_pretrained(tiny_converted, device="cpu", quantization="int8-weight-only")
    assert type(model.llm.model.layers[0].mlp.down_proj.weight).__name__ == "Int8Tensor"
    tokens = _tokens(model)
    embedding = torch.randn(1, model.bind.proj.in_features, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        quantised = model.llm(input_ids=tokens, injection_terms=model.conditioning_terms(embedding)).logits
        full = tiny_model.llm(input_ids=tokens, injection_terms=tiny_model.conditioning_terms(embedding)).logits
    assert (quantised - full).abs().max() < 0.03 * full.abs().max()
    engine = Engine(model.llm, model.tokenizer, max_batch=2, compile="aot_eager", max_length=96)
    request = Request(tokens[0].tolist(), model.conditioning_terms(embedding), GenerationConfig(max_new_tokens=4, temperature=0))
    stream = engine.submit(request)
    list(stream)
    engine.close()
    alone = GenerationState()
    list(stream_tokens(model.llm, model.tokenizer, request.prompt_ids, request.generation, alone, terms=request.terms))
    assert stream.state.token_ids == alone.token_ids
