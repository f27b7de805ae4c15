"""Incremental detokenizer: the stream equals SentencePiece's decode of the same ids."""

from __future__ import annotations

import io
import random

import pytest
import sentencepiece as spm

from demo.detokenizer import Detokenizer, decode_bytes, held_back
from demo.prompt import STOP_STRINGS

CJK_TEXT = "中文回答：这是一个测试。图片里有一只猫和一条狗。声音很大，音乐很好听。我们在公园里跑步。"


def _train(**options) -> spm.SentencePieceProcessor:
    """A small SentencePiece model with byte fallback, trained on English + Chinese text (<1 s)."""
    rng = random.Random(0)
    words = "the cat dog sound image music red blue small large there is a one two describe photo".split()
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    corpus += [CJK_TEXT[i : i + 12] for i in range(0, len(CJK_TEXT), 3)] * 5 + ["### Instruction:", "### Response:"] * 20
    buffer = io.BytesIO()
    settings = dict(
        model_type="bpe", vocab_size=400, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=0.98, minloglevel=2,
    )
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buffer, **(settings | options))
    return spm.SentencePieceProcessor(model_proto=buffer.getvalue())


@pytest.fixture(scope="module")
def llama_like():
    """LLaMA's settings: identity normalisation, extra whitespace kept, dummy prefix."""
    return _train(normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True)


@pytest.fixture(scope="module")
def nfkc():
    """SentencePiece's defaults: NFKC, whitespace folded (leading spaces all removed when decoding)."""
    return _train()


@pytest.fixture(scope="module")
def tiny_sp(tiny_release):
    return spm.SentencePieceProcessor(model_file=str(tiny_release.tokenizer))


def expected(sp: spm.SentencePieceProcessor, ids: list[int], stops: tuple[str, ...]) -> tuple[str, bool]:
    """The release's answer: SentencePiece's decode, stripped, cut before the first stop string."""
    text = sp.decode(ids).lstrip()
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut].rstrip(), True) if cut >= 0 else (text.rstrip(), False)


def stream(tokenizer, ids: list[int], stops: tuple[str, ...] = ()) -> tuple[list[str], Detokenizer, int]:
    """Push ids until a stop string ends generation, as stream_tokens does; returns ids consumed."""
    detok = Detokenizer(tokenizer, stops)
    deltas, used = [], 0
    for token in ids:
        deltas.append(detok.push(token))
        used += 1
        if detok.stopped:
            break
    deltas.append(detok.finish())
    return deltas, detok, used


def random_ids(sp: spm.SentencePieceProcessor, rng: random.Random, n: int) -> list[int]:
    """Normal pieces, byte pieces (real CJK characters and random bytes), <unk>, <s>, stop strings."""
    byte_id = {b: sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
    normal = [i for i in range(sp.get_piece_size()) if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))]
    ids: list[int] = []
    while len(ids) < n:
        r = rng.random()
        if r < 0.4:
            ids.append(rng.choice(normal))
        elif r < 0.6:
            ids += [byte_id[b] for b in rng.choice(CJK_TEXT + "é€😀").encode()]
        elif r < 0.75:
            ids.append(byte_id[rng.randrange(256)])
        elif r < 0.8:
            ids.append(sp.unk_id())
        elif r < 0.83:
            ids.append(sp.bos_id())
        elif r < 0.9:
            ids += sp.encode(rng.choice([" ", "  ", "\n", "\n\n### Instruction:", "### Res", " ###"]))
        else:
            ids += sp.encode(rng.choice(["好", "中文", "猫", " a cat"]))
    return ids[:n]


@pytest.mark.parametrize("which", ["llama_like", "nfkc", "tiny_sp"])
def test_random_ids_stream_equals_sentencepiece(request, which):
    sp = request.getfixturevalue(which)
    rng = random.Random(1)
    for trial in range(300):
        ids = random_ids(sp, rng, rng.randint(0, 40))
        stops = STOP_STRINGS if trial % 2 else ()
        deltas, detok, used = stream(sp, ids, stops)
        want, cut = expected(sp, ids[:used], stops)
        assert "".join(deltas) == detok.text == want, (ids[:used], deltas)
        assert detok.stopped == cut
        if not cut:
            assert used == len(ids)


def test_transformers_tokenizer_decodes_like_its_sentencepiece_model(tiny_model, tiny_sp):
    rng = random.Random(2)
    for _ in range(200):
        ids = random_ids(tiny_sp, rng, rng.randint(1, 30))
        deltas, detok, used = stream(tiny_model.tokenizer, ids, STOP_STRINGS)
        assert "".join(deltas) == detok.text == expected(tiny_sp, ids[:used], STOP_STRINGS)[0]


def test_chinese_cut_mid_character_ends_in_one_or_two_replacements(llama_like):
    sp = llama_like
    data = "中文".encode() + "回".encode()[:2]  # the limit fell inside the third character
    ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in data]
    deltas, detok, _ = stream(sp, ids)
    assert detok.text == sp.decode(ids) == "中文\ufffd\ufffd"  # as SentencePiece; HF gives 8 x U+FFFD
    assert deltas[-1] == "\ufffd\ufffd" and "".join(deltas[:-1]) == "中文"  # complete characters stream at once
    ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in "中文".encode() + b"\xe5"]
    assert stream(sp, ids)[1].text == "中文\ufffd"


def test_unk_is_written_as_sentencepiece_does(llama_like):
    sp = llama_like
    ids = sp.encode("a cat") + [sp.unk_id()] + sp.encode("dog")
    assert stream(sp, ids)[1].text == sp.decode(ids).strip()
    assert "\u2047" in sp.decode(ids)


def test_stop_string_is_held_back_until_it_cannot_form(llama_like):
    sp = llama_like
    ids = sp.encode("a cat\n### Instruction: more")
    detok = Detokenizer(sp, STOP_STRINGS)
    shown = ""
    for token in ids:
        shown += detok.push(token)
        assert "#" not in shown  # never shows a prefix of a stop string that may still form
        if detok.stopped:
            break
    assert detok.stopped and shown + detok.finish() == "a cat"
    ids = sp.encode("a cat ## two")  # a prefix that did not become a stop string is shown in the end
    deltas, detok, _ = stream(sp, ids, STOP_STRINGS)
    assert detok.text == "a cat ## two" and not detok.stopped


def test_push_after_stop_returns_nothing(llama_like):
    sp = llama_like
    detok = Detokenizer(sp, STOP_STRINGS)
    for token in sp.encode("yes\n### Response: x"):
        detok.push(token)
    assert detok.stopped
    assert detok.push(sp.encode("more")[0]) == "" and detok.text == "yes"


def test_decode_bytes_matches_sentencepiece_rules():
    assert decode_bytes(bytearray("中".encode()[:2]), final=False) == ("", 0)  # wait for the third byte
    assert decode_bytes(bytearray("中".encode()[:2]), final=True) == ("\ufffd\ufffd", 2)
    assert decode_bytes(bytearray(b"\x80a"), final=False) == ("\ufffda", 2)  # a stray continuation byte
    assert decode_bytes(bytearray(b"\xed\xa0\x80"), final=False) == ("\ufffd" * 3, 3)  # a surrogate is invalid


def test_held_back():
    assert held_back("a cat\n### Ins", STOP_STRINGS) == len("### Ins")
    assert held_back("a cat", STOP_STRINGS) == 0


def test_vocabulary_table_equals_the_sentencepiece_table(tiny_model, tiny_sp):
    """A folder without tokenizer.model (e.g. weights/pocket) decodes from the vocabulary: same rules."""
    from demo.detokenizer import _table_from_sentencepiece, _table_from_transformers

    assert _table_from_transformers(tiny_model.tokenizer) == _table_from_sentencepiece(tiny_sp)
