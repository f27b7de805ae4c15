"""Sampling and streaming."""

from __future__ import annotations

import pytest
import torch

from demo.config import GenerationConfig
from demo.generation import GenerationState, sample_next, stream_tokens
from demo.prompt import STOP_STRINGS, format_prompt


def test_greedy_at_temperature_zero():
    logits = torch.tensor([0.1, 3.0, 2.9])
    assert sample_next(logits, 0.0, 0.75, None) == 1


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    generator = torch.Generator().manual_seed(0)
    drawn = {sample_next(logits, 1.0, 0.5, generator) for _ in range(200)}
    assert drawn == {0}  # 0.6 alone exceeds 0.5
    drawn = {sample_next(logits, 1.0, 0.8, generator) for _ in range(400)}
    assert drawn == {0, 1}


@pytest.mark.parametrize("embedding_seed", range(6))
def test_streamed_deltas_concatenate_to_the_answer(tiny_release, tiny_model, embedding_seed):
    # Random weights emit byte-fallback pieces and <unk> often: the hard cases for streaming.
    # The answer is SentencePiece's decode of the ids (the original decodes with SentencePiece).
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_release.tokenizer))
    ids = [1] + tiny_model.tokenizer.encode(format_prompt("Describe the sound."), add_special_tokens=False)
    generator = torch.Generator().manual_seed(embedding_seed)
    terms = tiny_model.conditioning_terms(torch.randn(1, tiny_model.bind.proj.in_features, generator=generator))
    for seed in range(4):
        state = GenerationState()
        config = GenerationConfig(max_new_tokens=40, temperature=1.0, seed=seed)
        deltas = list(stream_tokens(tiny_model.llm, tiny_model.tokenizer, ids, config, state, STOP_STRINGS, terms=terms))
        assert "".join(deltas) == state.text
        full = sp.decode(state.token_ids).lstrip()
        cut = min((i for i in (full.find(s) for s in STOP_STRINGS) if i >= 0), default=len(full))
        assert state.text == full[:cut].rstrip()
        assert (cut < len(full)) == (state.finish_reason == "stop_string")
        assert all(deltas)


def test_same_seed_same_answer(tiny_model):
    ids = [1] + tiny_model.tokenizer.encode(format_prompt("Hi"), add_special_tokens=False)
    config = GenerationConfig(max_new_tokens=20, temperature=0.9, seed=7)
    answers = []
    for _ in range(2):
        state = GenerationState()
        list(stream_tokens(tiny_model.llm, tiny_model.tokenizer, ids, config, state))
        answers.append(state.token_ids)
    assert answers[0] == answers[1]


def test_prompt_template_is_the_release_one():
    assert format_prompt("Q") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nQ\n\n### Response:"
    )
    assert format_prompt("Q", input_text="I") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nQ\n\n### Input:\nI\n\n### Response:"
    )
    assert format_prompt("Q2", history=[("Q1", "A1")]).endswith("### Instruction:\nQ1\n\n### Response: A1\n\n### Instruction:\nQ2\n\n### Response:")


def _successor_llm(vocab: int, successor: dict[int, int]):
    """A real one-layer LlamaForCausalLM whose greedy next token is successor[current]: one-hot
    embeddings pass the residual stream unchanged (o_proj and down_proj zero), lm_head maps them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=vocab, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4)
    llm = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        llm.model.embed_tokens.weight.copy_(torch.eye(vocab))
        llm.model.layers[0].self_attn.o_proj.weight.zero_()
        llm.model.layers[0].mlp.down_proj.weight.zero_()
        head = torch.zeros(vocab, vocab)
        for current in range(vocab):
            head[successor.get(current, 2), current] = 1.0  # anything else: EOS
        llm.lm_head.weight.copy_(head)
    return llm


def test_chinese_answer_cut_at_the_token_limit_streams_as_sentencepiece_decodes(tiny_release, tiny_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_release.tokenizer))
    # Byte pieces only: the tiny vocabulary has no CJK pieces. 中 E4 B8 AD, 文 E6 96 87, 猫 E7 8C AB.
    answer = sp.encode("cat") + [sp.piece_to_id(f"<0x{b:02X}>") for b in "中文猫".encode()]
    prompt = sp.encode("Q")
    chain = [prompt[-1]] + answer
    assert len(set(chain)) == len(chain)  # each token has one successor
    successor = dict(zip(chain, chain[1:]))
    for cut in range(1, len(answer) + 1):
        llm = _successor_llm(sp.get_piece_size(), successor)
        state = GenerationState()
        deltas = list(stream_tokens(llm, tiny_model.tokenizer, [1] + prompt, GenerationConfig(max_new_tokens=cut, temperature=0), state))
        want = sp.decode(state.token_ids).strip()
        assert "".join(deltas) == state.text == want
    assert state.text == "cat中文猫"
    assert state.finish_reason == "length"
    # Cut one byte short, as SentencePiece decodes: two U+FFFD for the two bytes, not a row.
    cut_short = GenerationState()
    list(stream_tokens(llm, tiny_model.tokenizer, [1] + prompt, GenerationConfig(max_new_tokens=len(answer) - 1, temperature=0), cut_short))
    assert cut_short.text == "cat中文\ufffd\ufffd"


def test_a_tiny_temperature_samples_the_top_token_not_nan():
    from demo.generation import sample_next

    logits = torch.tensor([1.0, 3.0, 2.0, 3.0 - 1e-3])
    for temperature in (1e-45, 1e-30, 1e-8):
        assert sample_next(logits, temperature, 0.75, torch.Generator().manual_seed(0)) == 1
