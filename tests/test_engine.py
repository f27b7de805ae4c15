"""The engine: requests batched together give exactly what each gives alone."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from demo.cancel import CancelToken
from demo.config import GenerationConfig
from demo.engine import Engine, Request
from demo.errors import Cancelled
from demo.generation import GenerationState, stream_tokens
from demo.prompt import STOP_STRINGS, format_prompt
from benchmarks.no_eos import NoEos



def _request(model, question: str, seed: int, tokens: int, temperature: float = 0.0) -> Request:
    ids = [1] + model.tokenizer.encode(format_prompt(question), add_special_tokens=False)
    terms = model.conditioning_terms(torch.randn(1, model.bind.proj.in_features, generator=torch.Generator().manual_seed(seed)))
    return Request(ids, terms, GenerationConfig(max_new_tokens=tokens, temperature=temperature, top_p=0.9, seed=seed))


def _alone(model, tokenizer, request: Request) -> GenerationState:
    state = GenerationState()
    list(stream_tokens(model.llm, tokenizer, request.prompt_ids, request.generation, state, request.stop_strings, request.terms))
    return state


def _wait(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_rows_joining_and_cancelled_mid_batch_leave_the_others_unchanged(tiny_model):
    tokenizer = NoEos(tiny_model.tokenizer)
    engine = Engine(tiny_model.llm, tokenizer, max_batch=4)
    long_sampled = _request(tiny_model, "Describe the sound in many words.", seed=1, tokens=120, temperature=0.9)
    to_cancel = _request(tiny_model, "Hi", seed=2, tokens=120)
    joiner = _request(tiny_model, "What is in this picture? Tell me everything you see.", seed=3, tokens=40)
    token = CancelToken()
    to_cancel.cancel = token
    first, second = engine.submit(long_sampled), engine.submit(to_cancel)
    _wait(lambda: engine.steps >= 3)
    third = engine.submit(joiner)  # joins while the others run, with a longer prompt
    _wait(lambda: len(third.state.token_ids) >= 3)
    token.cancel()
    cancelled_at = len(second.state.token_ids)
    texts = ["".join(first), "".join(third)]
    with pytest.raises(Cancelled):
        list(second)
    engine.close()

    assert cancelled_at < 110 and second.state.finish_reason == "cancelled"  # really mid-batch
    for stream, request, text in ((first, long_sampled, texts[0]), (third, joiner, texts[1])):
        alone = _alone(tiny_model, tokenizer, request)
        assert stream.state.token_ids == alone.token_ids
        assert text == stream.state.text == alone.text and stream.state.finish_reason == "length"
    alone = _alone(tiny_model, tokenizer, to_cancel)
    assert second.state.token_ids == alone.token_ids[: len(second.state.token_ids)]
    assert engine.running == 0


def test_batched_rows_with_different_lengths_match_alone_and_stop_strings(tiny_model):
    """Eight requests at once (more than the batch holds), sampled and greedy, eos and stop
    strings as the model emits them."""
    engine = Engine(tiny_model.llm, tiny_model.tokenizer, max_batch=3)
    questions = ["Hi", "Describe the sound.", "What is this?", "Tell me a story about a cat and a dog."]
    requests = [_request(tiny_model, questions[i % 4], seed=i, tokens=24, temperature=0.8 * (i % 2)) for i in range(8)]
    for request in requests:
        request.stop_strings = STOP_STRINGS
    streams = [engine.submit(request) for request in requests]
    texts = ["".join(stream) for stream in streams]
    engine.close()
    for stream, request, text in zip(streams, requests, texts):
        alone = _alone(tiny_model, tiny_model.tokenizer, request)
        assert (stream.state.token_ids, stream.state.finish_reason, text) == (alone.token_ids, alone.finish_reason, alone.text)


def test_compiled_static_path_gives_eager_tokens_without_recompiling(tiny_model):
    """compile="aot_eager": the static cache and the torch.compile'd step (dynamo graph capture)
    without inductor's C++ build, which takes minutes on a CPU (benchmarks/bench_engine.py runs
    inductor). One graph for every request, whatever its prompt length, conditioning or slot."""
    from torch._dynamo.utils import counters

    tokenizer = NoEos(tiny_model.tokenizer)
    engine = Engine(tiny_model.llm, tokenizer, max_batch=2, compile="aot_eager", max_length=80)
    requests = [
        _request(tiny_model, "Hi", seed=0, tokens=30),
        _request(tiny_model, "Describe the sound.", seed=1, tokens=20),
        _request(tiny_model, "What is in this picture?", seed=2, tokens=25, temperature=0.8),
    ]
    list(engine.submit(requests[0]))  # warm-up: the one compilation
    graphs = counters["stats"]["unique_graphs"]
    streams = [engine.submit(request) for request in requests]  # 3 requests on 2 slots: join, leave, compact
    for stream in streams:
        list(stream)
    engine.close()
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation per request
    for stream, request in zip(streams, requests):
        assert stream.state.token_ids == _alone(tiny_model, tokenizer, request).token_ids


def test_pipeline_streams_from_two_threads_at_once(tiny_pipeline):
    from demo.pipeline import InputItem

    pipe = tiny_pipeline
    config = GenerationConfig(max_new_tokens=24, temperature=0.7, seed=5)
    conds = [pipe.encode([InputItem("embedding", torch.randn(pipe.embed_dim, generator=torch.Generator().manual_seed(i)))]) for i in range(2)]
    questions = ["What is this?", "Describe it in detail, please."]
    expected = ["".join(pipe.stream(q, c, generation=config)) for q, c in zip(questions, conds)]
    barrier, results = threading.Barrier(2), [None, None]

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = "".join(pipe.stream(questions[i], conds[i], generation=config))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected
    assert expected[0] != expected[1]


def test_a_consumer_that_stops_early_frees_its_row(tiny_pipeline):
    pipe = tiny_pipeline
    engine = Engine(pipe.model.llm, NoEos(pipe.model.tokenizer), max_batch=2)
    cond = pipe.encode()
    request = Request(pipe.prompt_ids("Hi")[0], cond.terms, GenerationConfig(max_new_tokens=400, temperature=0))
    stream = engine.submit(request)
    _wait(lambda: engine.running == 1)
    stream.cancel()
    _wait(lambda: engine.running == 0)
    with pytest.raises(Cancelled):
        list(stream)
    assert len(stream.state.token_ids) < 400
    engine.close()


def test_a_full_queue_refuses_with_busy_error(tiny_model):
    from demo.errors import BusyError

    engine = Engine(tiny_model.llm, NoEos(tiny_model.tokenizer), max_batch=1, max_waiting=1)
    first = engine.submit(_request(tiny_model, "Hi", seed=0, tokens=300))
    _wait(lambda: engine.running == 1)
    second = engine.submit(_request(tiny_model, "Hi", seed=1, tokens=2))  # waits for the row
    with pytest.raises(BusyError, match="busy"):
        engine.submit(_request(tiny_model, "Hi", seed=2, tokens=2))
    first.cancel()
    list(second)
    assert second.state.finish_reason == "length" and len(second.state.token_ids) == 2
    engine.close()


def test_caller_thread_mode_gives_the_threaded_tokens_and_stops(tiny_model):
    """background=False (ZeroGPU, demo/serve/zerogpu.py): no engine thread; the consumers step.
    Two consumers in two threads share the steps; tokens, stop strings and finish reasons are
    those of the threaded engine; a cancel frees the row at once (no later step would)."""
    tokenizer = NoEos(tiny_model.tokenizer)
    requests = [_request(tiny_model, "Hi", seed=0, tokens=30), _request(tiny_model, "Describe the sound.", seed=1, tokens=20, temperature=0.8)]
    stopped = _request(tiny_model, "What is this?", seed=2, tokens=40)
    threaded = Engine(tiny_model.llm, tokenizer, max_batch=2)
    expected = [(stream, "".join(stream)) for stream in [threaded.submit(r) for r in requests]]
    threaded.close()
    stopped.stop_strings = ("".join(Engine(tiny_model.llm, tokenizer).submit(stopped))[2:5],)  # text it really produces
    threaded = Engine(tiny_model.llm, tokenizer)
    want_stopped = threaded.submit(stopped)
    want_text = "".join(want_stopped)
    threaded.close()

    engine = Engine(tiny_model.llm, tokenizer, max_batch=2, background=False)
    streams = [engine.submit(r) for r in requests]
    assert engine._thread is None and engine.steps == 0  # nothing runs until someone iterates
    results = [None, None]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, "".join(streams[i]))) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (want, text), stream, got in zip(expected, streams, results):
        assert (stream.state.token_ids, stream.state.finish_reason, got) == (want.state.token_ids, "length", text)
    stream = engine.submit(stopped)
    assert ("".join(stream), stream.state.finish_reason) == (want_text, "stop_string") == (want_text, want_stopped.state.finish_reason)

    long = engine.submit(_request(tiny_model, "Hi", seed=3, tokens=400))
    assert next(long) is not None and engine.running == 1
    long.cancel()
    assert engine.running == 0  # freed by cancel() itself
    with pytest.raises(Cancelled):
        list(long)
    token = CancelToken()
    request = _request(tiny_model, "Hi", seed=4, tokens=400)
    request.cancel = token
    by_token = engine.submit(request)
    next(by_token)
    token.cancel()  # the request's own token: freed at the consumer's next step
    with pytest.raises(Cancelled):
        list(by_token)
    assert engine.running == 0 and len(by_token.state.token_ids) < 400
    waiting = engine.submit(_request(tiny_model, "Hi", seed=5, tokens=5))
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        list(waiting)
