"""Conversion of official-format checkpoints: strict keys, rotary permutation, HF-format bases."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from demo.convert import MetaCheckpoint, convert, load_adapter_checkpoint, rotary_permute
from demo.errors import WeightsError


def test_rotary_permute_matches_definition():
    # 2 heads of head_dim 4: rows (h, pair, 2) -> (h, 2, pair)
    w = torch.arange(8.0)
    assert rotary_permute(w, 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert rotary_permute(torch.arange(16.0).view(8, 2), 2)[:, 0].tolist() == [0, 4, 2, 6, 8, 12, 10, 14]


def _bad_adapter(tmp_path, release, drop=(), add=()):
    state = dict(load_adapter_checkpoint(release.adapter))
    for key in drop:
        del state[key]
    for key in add:
        state[key] = torch.zeros(1)
    path = tmp_path / "7B.pth"
    torch.save({"model": state}, path)
    return path


def test_missing_adapter_key_is_named(tmp_path, tiny_release):
    bad = _bad_adapter(tmp_path, tiny_release, drop=["llama.layers.1.attention.lora_wk_l2.weight"])
    with pytest.raises(WeightsError, match=r"1 missing tensors: llama.layers.1.attention.lora_wk_l2.weight\."):
        convert(tiny_release.llama_dir, bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "imagebind_llm.json").exists()


def test_unexpected_adapter_key_is_named(tmp_path, tiny_release):
    bad = _bad_adapter(tmp_path, tiny_release, add=["llama.layers.0.attention.lora_wx_l1.weight"])
    with pytest.raises(WeightsError, match="unexpected tensors.*lora_wx_l1"):
        convert(tiny_release.llama_dir, bad, tmp_path / "out", progress=False)


def test_adapter_for_other_layer_count_is_refused(tmp_path, tiny_release):
    state = load_adapter_checkpoint(tiny_release.adapter)
    state = {k: v for k, v in state.items() if not k.startswith("llama.layers.1.")}
    torch.save({"model": state}, tmp_path / "7B.pth")
    with pytest.raises(WeightsError, match="22 missing tensors") as error:
        convert(tiny_release.llama_dir, tmp_path / "7B.pth", tmp_path / "out", progress=False)
    assert all(f"llama.layers.1.{name}" in str(error.value) for name in ("attention.gate", "ffn_norm.weight", "feed_forward.lora_w2_l2.weight"))


def test_truncated_checkpoint_says_download_again(tmp_path, tiny_release):
    data = tiny_release.adapter.read_bytes()
    (tmp_path / "7B.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="download it again"):
        convert(tiny_release.llama_dir, tmp_path / "7B.pth", tmp_path / "out", progress=False)


def test_missing_tokenizer_is_reported(tmp_path, tiny_release):
    import shutil

    base = tmp_path / "llama"
    shutil.copytree(tiny_release.llama_dir, base)
    with pytest.raises(WeightsError, match="tokenizer.model"):
        convert(base, tiny_release.adapter, tmp_path / "out", progress=False)


def test_hf_format_base_gives_the_same_model(tmp_path, tiny_release, tiny_converted):
    """Base given in Hugging Face format (already permuted) + Meta delta == Meta base + delta."""
    from transformers import LlamaConfig

    meta = MetaCheckpoint(tiny_release.llama_dir)
    hf = tmp_path / "hf_base"
    hf.mkdir()
    s = meta.shape
    LlamaConfig(
        vocab_size=s.vocab_size, hidden_size=s.dim, intermediate_size=s.intermediate, num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads, rms_norm_eps=s.norm_eps,
    ).save_pretrained(hf)
    save_file({k: meta.get(k).contiguous() for k in meta.hf_keys()}, str(hf / "model.safetensors"))
    (hf / "tokenizer.model").write_bytes(tiny_release.tokenizer.read_bytes())
    out = convert(hf, tiny_release.adapter, tmp_path / "out", delta=tiny_release.delta_dir, dtype=torch.float32, progress=False)
    index = json.loads((out / "llm" / "model.safetensors.index.json").read_text())
    ref_index = json.loads((tiny_converted / "llm" / "model.safetensors.index.json").read_text())
    assert index["weight_map"].keys() == ref_index["weight_map"].keys()
    ours = {k: v for f in set(index["weight_map"].values()) for k, v in load_file(str(out / "llm" / f)).items()}
    ref = {k: v for f in set(ref_index["weight_map"].values()) for k, v in load_file(str(tiny_converted / "llm" / f)).items()}
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=1e-6)


def test_sharding_writes_an_index_hf_can_load(tmp_path, tiny_release):
    from transformers import LlamaForCausalLM

    out = convert(tiny_release.llama_dir, tiny_release.adapter, tmp_path / "out", dtype=torch.float16, max_shard_bytes=100_000, progress=False)
    shards = sorted((out / "llm").glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    model = LlamaForCausalLM.from_pretrained(out / "llm")
    assert model.config.attention_bias and model.config.mlp_bias
    assert model.model.layers[0].self_attn.k_proj.bias.abs().max() == 0  # the release has no k bias


def test_missing_bind_norm_is_named_missing_not_the_rest_unexpected(tmp_path, tiny_release):
    bad = _bad_adapter(tmp_path, tiny_release, drop=["image_bind_norm_3.weight"])
    with pytest.raises(WeightsError) as error:
        convert(tiny_release.llama_dir, bad, tmp_path / "out", progress=False)
    message = str(error.value)
    assert "1 missing tensors: image_bind_norm_3.weight." in message
    assert "unexpected" not in message
    with pytest.raises(WeightsError, match="1 missing tensors: image_bind_norm_3.weight"):  # also when asked for custom
        convert(tiny_release.llama_dir, bad, tmp_path / "out", progress=False, custom_structure=True)


BLOCK_3 = ["image_bind_norm_3.weight", "image_bind_f1_3.weight", "image_bind_f2_3.weight", "image_bind_f3_3.weight"]


def test_adapter_missing_a_bind_block_is_refused_unless_custom(tmp_path, tiny_release):
    from demo.model import ImageBindLLM

    bad = _bad_adapter(tmp_path, tiny_release, drop=BLOCK_3)
    with pytest.raises(WeightsError, match="4 missing tensors: image_bind_f1_3.weight, image_bind_f2_3.weight.*--custom-structure"):
        convert(tiny_release.llama_dir, bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "imagebind_llm.json").exists()
    out = convert(tiny_release.llama_dir, bad, tmp_path / "custom", progress=False, custom_structure=True, dtype=torch.float32)
    assert len(ImageBindLLM.from_pretrained(out, device="cpu").bind.blocks) == 2


def test_extra_bind_block_is_refused_unless_custom(tmp_path, tiny_release):
    state = dict(load_adapter_checkpoint(tiny_release.adapter))
    for key in BLOCK_3:
        state[key.replace("_3.", "_4.")] = state[key].clone()
    torch.save({"model": state}, tmp_path / "7B.pth")
    with pytest.raises(WeightsError, match="4 unexpected tensors: image_bind_f1_4.weight.*bind blocks \\[1, 2, 3, 4\\]"):
        convert(tiny_release.llama_dir, tmp_path / "7B.pth", tmp_path / "out", progress=False)
    convert(tiny_release.llama_dir, tmp_path / "7B.pth", tmp_path / "custom", progress=False, custom_structure=True)


def test_other_lora_rank_is_refused_unless_custom(tmp_path, tiny_release):
    state = dict(load_adapter_checkpoint(tiny_release.adapter))
    state = {k: (v[:8] if k.endswith("_l1.weight") else v[:, :8] if k.endswith("_l2.weight") else v) for k, v in state.items()}
    torch.save({"model": state}, tmp_path / "7B.pth")
    with pytest.raises(WeightsError, match=r"llama.layers.0.attention.lora_wq_l1.weight \(8, 64\) \(expected \(16, 64\)\)"):
        convert(tiny_release.llama_dir, tmp_path / "7B.pth", tmp_path / "out", progress=False)
    convert(tiny_release.llama_dir, tmp_path / "7B.pth", tmp_path / "custom", progress=False, custom_structure=True)


def test_cli_custom_structure_flag(tmp_path, tiny_release, capsys):
    from demo.weights_tools.convert import main

    bad = _bad_adapter(tmp_path, tiny_release, drop=BLOCK_3)
    args = ["--base", str(tiny_release.llama_dir), "--adapter", str(bad), "--dtype", "float32"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 1
    assert "--custom-structure" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "b"), "--custom-structure"]) == 0


# ---------------------------------------------------------------------------------------------
# Tokenizer: the converted one gives SentencePiece's ids, whatever the model's normalisation rule
# ---------------------------------------------------------------------------------------------


def _train_sentencepiece(path, **options):
    """A small byte-fallback BPE model (<1 s). Default options: SentencePiece's nmt_nfkc with whitespace folding."""
    import io
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    words = "the cat dog sound image music red blue small large there is a one two describe photo".split()
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)] + ["中文回答：这是一只猫。"] * 20
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buffer, model_type="bpe", vocab_size=400, byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, **options,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def _random_texts(n=1500, seed=1):
    import random

    rng = random.Random(seed)
    chars = list("ab c\n\t\r中文Ａﬁé①😀<s>#") + [" ", "  ", "\u3000", "\u00a0", "\u2581", "\u200b"]
    return ["".join(rng.choice(chars) for _ in range(rng.randint(0, 20))) for _ in range(n)]


def _assert_same_ids(tokenizer, sp, texts):
    for text in texts:
        assert tokenizer.encode(text, add_special_tokens=False) == sp.encode(text), repr(text)


def test_converted_tokenizer_gives_sentencepiece_ids(tiny_release, tiny_converted):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(tiny_release.tokenizer))
    tokenizer = AutoTokenizer.from_pretrained(tiny_converted / "llm")
    # A leading space before a space, and "<s>" typed as text, differed before (Metaspace, special-token splitting).
    _assert_same_ids(tokenizer, sp, ["  two spaces", " <s> hi </s>", "### Instruction:\n  indented"] + _random_texts())
    assert (tiny_converted / "llm" / "tokenizer.model").read_bytes() == tiny_release.tokenizer.read_bytes()


def test_nfkc_tokenizer_is_honoured(tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from demo.convert import build_tokenizer, save_tokenizer

    path = _train_sentencepiece(tmp_path / "src" / "tokenizer.model")  # nmt_nfkc, whitespace folded
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert sp.encode("a\nb") == sp.encode("a b")  # SentencePiece reads the newline as a space here
    save_tokenizer(build_tokenizer(path), path, tmp_path / "llm")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "llm")
    _assert_same_ids(tokenizer, sp, ["a\nb", "  two  spaces  ", "ＡＢＣ ﬁ ①"] + _random_texts())


def test_tokenizer_that_cannot_be_matched_is_refused_before_writing(tmp_path, tiny_release):
    # identity rule with whitespace folding: no Hugging Face normaliser reproduces it exactly.
    path = _train_sentencepiece(tmp_path / "tok" / "tokenizer.model", normalization_rule_name="identity")
    with pytest.raises(WeightsError, match=r"normalisation rule 'identity', remove_extra_whitespaces=True.*On the text .* they differ from piece \d+: SentencePiece .*, converted "):
        convert(tiny_release.llama_dir, tiny_release.adapter, tmp_path / "out", tokenizer=path, progress=False)
    assert not (tmp_path / "out").exists()
