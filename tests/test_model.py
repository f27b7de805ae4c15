"""The gated LLM against an independent implementation of the release's forward pass."""

from __future__ import annotations

from pathlib import Path

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


# ---------------------------------------------------------------------------------------------
# Hostile converted folders: refused from their headers and configs, before anything is built
# ---------------------------------------------------------------------------------------------


def _copy(tiny_converted, tmp_path):
    import shutil

    return Path(shutil.copytree(tiny_converted, tmp_path / "folder"))


def _edit_json(path, **changes):
    import json

    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_hidden_layers": 100_000}, "claims 100000 layers; the weights .* hold 2"),
        ({"num_hidden_layers": 3}, "claims 3 layers"),  # loaded before, the missing layer randomly initialised
        ({"vocab_size": 10_000_000}, r"model.embed_tokens.weight \(512, 64\) \(config.json gives \(10000000, 64\)\)"),
        ({"intermediate_size": 1_000_000}, r"mlp.gate_proj.weight \(192, 64\) \(config.json gives \(1000000, 64\)\)"),
        ({"hidden_size": "64"}, "hidden_size = '64' is not a positive integer"),
        ({"auto_map": {"AutoModelForCausalLM": "evil.Model"}}, "asks for custom code"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quantization_config"),
        ({"model_type": "evil"}, "model_type 'evil'"),
    ],
)
def test_hostile_llm_config_is_refused_before_building(tiny_converted, tmp_path, changes, message):
    import resource

    from demo.errors import WeightsError

    folder = _copy(tiny_converted, tmp_path)
    _edit_json(folder / "llm" / "config.json", **changes)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WeightsError, match=message):
        ImageBindLLM.from_pretrained(folder, device="cpu")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing large was allocated


def test_tokenizer_config_with_custom_code_is_refused_without_prompting(tiny_converted, tmp_path, monkeypatch):
    from demo.errors import WeightsError

    folder = _copy(tiny_converted, tmp_path)
    (folder / "llm" / "evil.py").write_text("raise SystemExit('custom code ran')\n")
    _edit_json(folder / "llm" / "tokenizer_config.json", auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]})
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked on the console"))
    with pytest.raises(WeightsError, match="asks for custom code"):
        ImageBindLLM.from_pretrained(folder, device="cpu")
    _edit_json(folder / "llm" / "tokenizer_config.json", auto_map=None)
    import json

    config = json.loads((folder / "llm" / "tokenizer_config.json").read_text())
    del config["auto_map"]
    config["tokenizer_class"] = "EvilTokenizer"
    (folder / "llm" / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="tokenizer_class 'EvilTokenizer'"):
        ImageBindLLM.from_pretrained(folder, device="cpu")


@pytest.mark.parametrize("key", ["llm", "adapter"])
@pytest.mark.parametrize("value", ["../elsewhere", "/etc", 7])
def test_folder_config_pointing_outside_is_refused(tiny_converted, tmp_path, key, value):
    from demo.errors import WeightsError

    folder = _copy(tiny_converted, tmp_path)
    _edit_json(folder / "imagebind_llm.json", **{key: value})
    with pytest.raises(WeightsError, match=f"'{key}'"):
        ImageBindLLM.from_pretrained(folder, device="cpu")


def test_shard_index_pointing_outside_is_refused(tiny_converted, tmp_path):
    import json

    from demo.errors import WeightsError

    folder = _copy(tiny_converted, tmp_path)
    index = folder / "llm" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.norm.weight"] = "../../adapter.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="weight_map entry = '../../adapter.safetensors' points outside"):
        ImageBindLLM.from_pretrained(folder, device="cpu")


def test_adapter_sized_for_other_layer_count_is_refused(tiny_converted, tmp_path):
    from safetensors.torch import load_file, save_file

    from demo.errors import WeightsError

    folder = _copy(tiny_converted, tmp_path)
    state = load_file(str(folder / "adapter.safetensors"))
    state["injection.gates"] = torch.zeros(100_000, 4)
    save_file(state, str(folder / "adapter.safetensors"))
    with pytest.raises(WeightsError, match=r"injection.gates \(100000, 4\)"):
        ImageBindLLM.from_pretrained(folder, device="cpu")


def test_real_folders_pass_the_checks(tiny_converted):
    from demo.model import check_complete, read_folder_config

    for folder in (tiny_converted, Path(__file__).resolve().parents[1] / "weights" / "pocket"):
        check_complete(folder, read_folder_config(folder))


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
