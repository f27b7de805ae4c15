"""The pipeline end to end on the tiny preset: every modality, mixing, cache, prompts, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from demo.config import GenerationConfig
from demo.errors import InputError, PromptTooLongError
from demo.pipeline import ImageBindLLMPipeline, InputItem

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GREEDY = GenerationConfig(max_new_tokens=8, temperature=0.0)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return ImageBindLLMPipeline.from_pretrained("tiny", home=tmp_path_factory.mktemp("ibllm_home"))


def _example(suffixes):
    for suffix in suffixes:
        found = sorted(EXAMPLES.glob(f"*{suffix}"))
        if found:
            return found[0]
    raise AssertionError(f"no example file with {suffixes} in {EXAMPLES}")


EXAMPLE_FILES = {
    "image": (".png", ".jpg"), "audio": (".wav", ".ogg"), "video": (".mp4",), "point": (".ply",),
    "text": (".txt",), "depth": ("depth.png", ".npy"), "thermal": ("thermal.png",), "imu": (".csv",), "embedding": ("embedding.npy",),
}


@pytest.mark.parametrize("modality", sorted(EXAMPLE_FILES))
def test_every_modality_reaches_the_llm(pipe, modality):
    path = _example(EXAMPLE_FILES[modality])
    cond = pipe.encode([InputItem(modality, path)])
    assert cond.embedding.shape == (pipe.embed_dim,)
    assert torch.isfinite(cond.embedding).all()
    assert cond.mix == [(modality, path.name, pytest.approx(1.0, abs=1e-5))]
    assert cond.terms.shape[0] == 1
    text = "".join(pipe.stream("What is this?", cond, generation=GREEDY))
    assert isinstance(text, str)


def test_conditioning_changes_the_answer_distribution(pipe):
    image = pipe.encode([InputItem("image", _example((".png",)))])
    audio = pipe.encode([InputItem("audio", _example((".wav",)))])
    assert not torch.allclose(image.terms, audio.terms)


def test_mix_of_image_and_audio(pipe):
    image, audio = _example((".png",)), _example((".wav",))
    cond = pipe.encode([InputItem("image", image, 1.0), InputItem("audio", audio, 0.5)])
    e_image, e_audio = pipe.embed(InputItem("image", image)), pipe.embed(InputItem("audio", audio))
    torch.testing.assert_close(cond.embedding, (e_image + 0.5 * e_audio) / (1.5 + 1e-6))
    assert [round(w, 4) for _, _, w in cond.mix] == [0.6667, 0.3333]


def test_two_inputs_of_one_modality_and_zero_weights(pipe):
    a, b = sorted(EXAMPLES.glob("*.png"))[:2]
    cond = pipe.encode([InputItem("image", a), InputItem("image", b), InputItem("audio", _example((".wav",)), 0.0)])
    assert [name for _, name, _ in cond.mix] == [a.name, b.name]  # weight 0 leaves the mix


def test_text_only_uses_the_blank_image(pipe):
    cond = pipe.encode([])
    blank = pipe.encoder.encode("image", torch.zeros(3, 224, 224))
    torch.testing.assert_close(cond.embedding, torch.nn.functional.normalize(blank, dim=0))
    out = pipe("Tell me a story.", generation=GREEDY)
    assert out.finish_reason in {"eos", "length", "stop_string"}


def test_embedding_files_round_trip(pipe, tmp_path):
    item = InputItem("image", _example((".png",)))
    saved = pipe.save_embeddings([item], tmp_path / "emb.safetensors")
    from safetensors.torch import load_file

    (vector,) = load_file(str(saved)).values()
    np.save(tmp_path / "v.npy", vector.numpy())
    cond = pipe.encode([InputItem("embedding", tmp_path / "v.npy")])
    torch.testing.assert_close(cond.embedding, pipe.embed(item))


def test_cache_on_pulls_toward_cached_features(pipe, tmp_path):
    import faiss

    from demo.cache import RetrievalSettings, VisualCache

    features = torch.nn.functional.normalize(torch.randn(50, pipe.embed_dim), dim=-1).numpy()
    index = faiss.IndexFlatIP(pipe.embed_dim)
    index.add(features)
    pipe.cache = VisualCache(index, None, pipe.embed_dim)
    try:
        item = [InputItem("audio", _example((".wav",)))]
        off = pipe.encode(item, RetrievalSettings(enabled=False))
        on = pipe.encode(item, RetrievalSettings(enabled=True, index_path="in-memory", k=5, weight=0.5))
        assert on.neighbours is not None and on.neighbours.ids.shape == (1, 5)
        assert not torch.allclose(on.embedding, off.embedding)
        assert abs(on.embedding.norm().item() - 1) < 1e-5  # the cache re-normalises
        small = pipe.encode(item, RetrievalSettings(enabled=True, k=80))  # more than the 50 entries
        assert small.neighbours.ids.shape == (1, 50) and "using k=50" in small.notes[0]
    finally:
        pipe.cache = None
    noted = pipe.encode(item, RetrievalSettings(enabled=True, index_path="x"))
    assert any("cache is off" in note for note in noted.notes)


def test_history_is_dropped_oldest_first_to_fit(pipe):
    context = pipe.model.context_length
    long_turn = ("word " * (context // 4), "answer")
    ids, dropped = pipe.prompt_ids("Q", [long_turn] * 6, max_new_tokens=16)
    assert len(ids) + 16 <= context and dropped >= 1
    ids_all, dropped_none = pipe.prompt_ids("Q", [("a", "b")], max_new_tokens=16)
    assert dropped_none == 0 and ids_all[0] == pipe.model.tokenizer.bos_token_id


def test_the_whole_answer_says_how_many_turns_were_dropped(pipe):
    long_turn = ("word " * (pipe.model.context_length // 4), "answer")
    _, dropped = pipe.prompt_ids("Q", [long_turn] * 6, max_new_tokens=2)
    output = pipe("Q", history=[long_turn] * 6, generation=GenerationConfig(max_new_tokens=2, temperature=0.0))
    assert dropped >= 1 and output.dropped_turns == dropped
    assert pipe("Q", history=[("a", "b")], generation=GenerationConfig(max_new_tokens=2)).dropped_turns == 0


def test_older_names_still_work(pipe):
    from demo.cache import CacheConfig, RetrievalSettings

    assert CacheConfig is RetrievalSettings  # README documented CacheConfig
    assert pipe.cache_defaults is pipe.retrieval_defaults and not pipe.retrieval_defaults.enabled


def test_over_long_question_is_a_clear_error(pipe):
    with pytest.raises(PromptTooLongError, match="Shorten it by at least"):
        list(pipe.stream("word " * pipe.model.context_length, pipe.encode([])))


@pytest.mark.parametrize(
    "item, message",
    [
        (InputItem("smell", "x.txt"), "unknown modality"),
        (InputItem("image", "/nonexistent/cat.png"), "cat.png"),
    ],
)
def test_bad_inputs_name_the_problem(pipe, item, message):
    with pytest.raises(InputError, match=message):
        pipe.encode([item])


def test_empty_question_and_bad_settings(pipe):
    with pytest.raises(InputError, match="empty"):
        list(pipe.stream("  "))
    with pytest.raises(InputError, match="temperature"):
        list(pipe.stream("hi", generation=GenerationConfig(temperature=5)))


def test_stream_resumed_on_other_threads_stays_conditioned(pipe):
    """Servers (Gradio) advance a generator from whichever worker thread is free."""
    from concurrent.futures import ThreadPoolExecutor

    cond = pipe.encode([InputItem("image", _example((".png",)))])
    config = GenerationConfig(max_new_tokens=12, temperature=0.0)
    same_thread = "".join(pipe.stream("What is this?", cond, generation=config))
    stream = pipe.stream("What is this?", cond, generation=config)
    pools = [ThreadPoolExecutor(1), ThreadPoolExecutor(1)]
    deltas, turn = [], 0
    while True:
        delta = pools[turn % 2].submit(next, stream, None).result()
        if delta is None:
            break
        deltas.append(delta)
        turn += 1
    assert "".join(deltas) == same_thread
    # The check has teeth: without the injection the answer differs.
    from demo.generation import GenerationState, stream_tokens

    ids, _ = pipe.prompt_ids("What is this?", max_new_tokens=12)
    plain = "".join(stream_tokens(pipe.model.llm, pipe.model.tokenizer, ids, config, GenerationState(), ()))
    assert plain != same_thread
