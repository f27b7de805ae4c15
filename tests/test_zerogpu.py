"""Hugging Face ZeroGPU (demo/serve/zerogpu.py): off ZeroGPU the real `spaces` package changes
nothing; on a ZeroGPU Space `from_pretrained` gives the pipeline whose GPU work runs in
`@spaces.GPU` calls; through a worker boundary like spaces' (pickled arguments and results,
another thread, a closed generator stopping at its next item) it answers as the engine does."""

from __future__ import annotations

import inspect
import os
import pickle
import queue
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from demo.cancel import CancelToken
from demo.config import GenerationConfig
from demo.engine import Engine
from demo.errors import BadInputError, Cancelled
from demo.generation import GenerationState
from demo.pipeline import ImageBindLLMPipeline, InputItem
from demo.serve import zerogpu

ROOT = Path(__file__).resolve().parents[1]


def test_off_zerogpu_spaces_changes_nothing_and_the_pipeline_keeps_its_engine_thread(tiny_pipeline, monkeypatch):
    spaces = pytest.importorskip("spaces")  # pinned in requirements.txt
    monkeypatch.delenv(zerogpu.ZERO_GPU_VARIABLE, raising=False)

    def function(x):
        return x

    def generator(x):
        yield x

    assert spaces.GPU(function) is function and spaces.GPU(duration=30)(generator) is generator
    assert zerogpu.spaces_gpu()(function, duration=5) is function
    assert not zerogpu.detect()
    assert type(tiny_pipeline) is ImageBindLLMPipeline and tiny_pipeline.engine.background


def test_on_a_zerogpu_space_from_pretrained_decorates_the_gpu_work(tiny_pipeline, tmp_path):
    """A process with the Space's variables (the device API unreachable: nothing is called):
    the real `spaces` wraps the pipeline's three GPU functions, the engine has no thread, and the
    app builds on it unchanged."""
    pytest.importorskip("spaces")
    script = (
        "import app\n"
        "pipe = app.load_pipeline(app.parse_args(['--weights', 'tiny', '--device', 'cpu']))  # as `python app.py` loads\n"
        "wrapped = [f for f in (pipe._encode_on_gpu, pipe._embed_on_gpu, pipe._decode_on_gpu) if hasattr(f, 'zerogpu')]\n"
        "app.build_demo(pipe)  # the app takes it unchanged\n"
        "print(type(pipe).__name__, pipe.engine.background, len(wrapped))\n"
    )
    env = {**os.environ, "SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": "http://127.0.0.1:9", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-3:] == ["ZeroGPUPipeline", "False", "3"]


class WorkerBoundary:
    """What `spaces.GPU` does on ZeroGPU, without the fork and the GPU: arguments and results cross
    by pickle, the call runs in another thread (the worker's), `duration` is evaluated with the
    call's arguments, and a generator closed by the caller stops after its next item."""

    def __init__(self):
        self.durations: list[float] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, function, duration=None):
        def ask(args, kwargs):
            seconds = duration(*args, **kwargs) if callable(duration) else duration
            assert seconds is not None and seconds > 0
            self.durations.append(seconds)
            return pickle.loads(pickle.dumps((args, kwargs)))

        def regular(*args, **kwargs):
            args, kwargs = ask(args, kwargs)
            with ThreadPoolExecutor(1) as worker:
                return pickle.loads(pickle.dumps(worker.submit(function, *args, **kwargs).result()))

        def generator(*args, **kwargs):
            args, kwargs = ask(args, kwargs)
            items, stop = queue.Queue(), threading.Event()

            def run():
                results = function(*args, **kwargs)
                for item in results:
                    if stop.is_set():
                        results.close()
                        break
                    items.put(pickle.loads(pickle.dumps(item)))  # crossed as spaces crosses it
                items.put(None)

            thread = threading.Thread(target=run)
            self.threads.append(thread)
            thread.start()
            try:
                while (item := items.get()) is not None:
                    yield item
            except GeneratorExit:
                stop.set()
                raise

        return generator if inspect.isgeneratorfunction(function) else regular

    def join(self):
        for thread in self.threads:
            thread.join(timeout=60)


def _zero(pipe, boundary):
    engine = Engine(pipe.model.llm, pipe.model.tokenizer, background=False)
    return zerogpu.ZeroGPUPipeline(pipe.model, pipe.encoder, pipe.cache, engine=engine, gpu=boundary)


def _inputs(pipe, seed):
    return [InputItem("embedding", torch.randn(pipe.embed_dim, generator=torch.Generator().manual_seed(seed)), name=f"v{seed}")]


def test_through_the_worker_boundary_it_answers_as_the_engine_does(tiny_pipeline):
    pipe, boundary = tiny_pipeline, WorkerBoundary()
    zero = _zero(pipe, boundary)
    for seed, question, config, stop in [
        (0, "What is this?", GenerationConfig(max_new_tokens=30, temperature=0.0), ()),
        (1, "Describe it.", GenerationConfig(max_new_tokens=20, temperature=0.8, seed=3), ()),
    ]:
        cond, want_cond = zero.encode(_inputs(pipe, seed)), pipe.encode(_inputs(pipe, seed))
        assert torch.equal(cond.terms, want_cond.terms) and cond.mix == want_cond.mix
        want_state, state = GenerationState(), GenerationState()
        want = list(pipe.stream(question, want_cond, generation=config, state=want_state, stop=stop))
        got = list(zero.stream(question, cond, generation=config, state=state, stop=stop))
        assert got == want and (state.token_ids, state.text, state.finish_reason) == (want_state.token_ids, want_state.text, want_state.finish_reason)
    # A stop string the answer really contains: cut at the same place, finish_reason "stop_string".
    config = GenerationConfig(max_new_tokens=30, temperature=0.0)
    stop = ("".join(pipe.stream("What is this?", pipe.encode(_inputs(pipe, 0)), generation=config))[3:5],)
    want_state, state = GenerationState(), GenerationState()
    want = "".join(pipe.stream("What is this?", pipe.encode(_inputs(pipe, 0)), generation=config, state=want_state, stop=stop))
    got = "".join(zero.stream("What is this?", zero.encode(_inputs(pipe, 0)), generation=config, state=state, stop=stop))
    assert (got, state.finish_reason) == (want, want_state.finish_reason) == (want, "stop_string")
    assert torch.equal(zero.embed(_inputs(pipe, 2)[0]), pipe.embed(_inputs(pipe, 2)[0]))
    assert zero("Hi", _inputs(pipe, 4), generation=config).text == pipe("Hi", _inputs(pipe, 4), generation=config).text
    # The decoding call asks for time by its token limit; the durations can be changed later.
    assert boundary.durations[-1] == zero.durations.decode_base + zero.durations.decode_per_token * 30  # the last call: config.max_new_tokens
    zero.durations = zerogpu.GPUDurations(encode=5, decode_base=1, decode_per_token=0.5)
    list(zero.stream("Hi", zero.encode(), generation=config))
    assert boundary.durations[-2:] == [5, 1 + 0.5 * 30]
    boundary.join()
    assert zero.engine.running == 0 and zero.engine._thread is None


def test_cancel_and_early_stop_free_the_worker_row_and_errors_keep_their_message(tiny_pipeline):
    pipe, boundary = tiny_pipeline, WorkerBoundary()
    zero = _zero(pipe, boundary)
    long = GenerationConfig(max_new_tokens=500, temperature=1.0, seed=1)  # sampled: no early eos on random weights
    token, state = CancelToken(), GenerationState()
    deltas = zero.stream("Talk", zero.encode(), generation=long, state=state, cancel=token)
    next(deltas)
    token.cancel()
    with pytest.raises(Cancelled):
        list(deltas)
    assert state.finish_reason == "cancelled"
    boundary.join()
    assert zero.engine.running == 0  # the worker stopped at its next delta and freed the row

    deltas = zero.stream("Talk", zero.encode(), generation=long)
    next(deltas)
    deltas.close()  # the consumer goes away (a closed tab)
    boundary.join()
    assert zero.engine.running == 0

    bad = [InputItem("embedding", torch.zeros(3), name="short.npy")]
    with pytest.raises(BadInputError, match=r"short.npy: .*expected 1024 floating-point values") as caught:
        zero.encode(_inputs(pipe, 0) + bad)
    assert caught.value.index == 1 and caught.value.name == "short.npy"
    with pytest.raises(ValueError, match="background=False"):
        zerogpu.ZeroGPUPipeline(pipe.model, pipe.encoder, engine=Engine(pipe.model.llm, pipe.model.tokenizer), gpu=boundary)
