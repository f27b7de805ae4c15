"""Holding up under real use: a corpus of bad inputs, faults during generation, partial weights.

The bad-input corpus (scripts/bad_inputs.py) goes through the library and through a real
`python app.py` in a child process, whose memory is measured apart from the test's. Faults
(cancel, disconnect, an exception mid-answer) use an in-process app around a scripted pipeline
whose answers take a known time, so that "the worker is free again" is a timing, not a guess.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

import app

ROOT = Path(__file__).resolve().parents[1]
from scripts import bad_inputs  # noqa: E402
from scripts.local_app import LocalApp  # noqa: E402

MiB = 2**20


def problems_of(outcomes: list[bad_inputs.Outcome]) -> list[str]:
    return [f"{o.case.name}: {problem}" for o in outcomes for problem in o.problems()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[bad_inputs.Case]:
    return bad_inputs.generate(tmp_path_factory.mktemp("bad_inputs"))


# --------------------------------------------------------------------------- bad inputs
def test_library_gives_every_bad_input_a_clear_error_or_an_answer(tiny_pipeline, corpus):
    outcomes = bad_inputs.run_library(tiny_pipeline, corpus)
    assert not problems_of(outcomes)
    assert {o.kind for o in outcomes} == {"answer", "error"}
    assert not (corpus[0].path.parent / bad_inputs.PWNED).exists(), "a corpus pickle was unpickled"


def test_app_survives_the_corpus_with_clear_errors_and_flat_memory(corpus):
    # The app's default upload limit (200 MB) lets the 120 MB point cloud through.
    with LocalApp("--max-file-size", "200mb") as server:
        # Warm-up: every decoder and ImageBind tower is loaded once, by the usable files.
        assert not problems_of(bad_inputs.run_app(server.url, [c for c in corpus if c.expect == "answer"]))
        rss = [server.rss()]
        first = bad_inputs.run_app(server.url, corpus)
        rss.append(server.rss())
        # The same corpus again: memory kept by the first pass must not grow (no leak per request).
        second = bad_inputs.run_app(server.url, corpus)
        rss.append(server.rss())
        print("server RSS (MiB) after warm-up, pass 1, pass 2:", [round(r / MiB) for r in rss])
        assert not problems_of(first) and not problems_of(second)
        assert server.alive  # and still answering:
        assert bad_inputs.run_app(server.url, [c for c in corpus if c.expect == "answer"][:1])[0].kind == "answer"
    # Pass 1 may keep one-off initialisations of error paths (codecs, thread pools); pass 2 adds ~0.
    assert rss[1] - rss[0] < 256 * MiB, f"memory after the corpus: {[r // MiB for r in rss]} MiB"
    assert rss[2] - rss[1] < 64 * MiB, f"memory grew on a second pass: {[r // MiB for r in rss]} MiB"
    assert not (corpus[0].path.parent / bad_inputs.PWNED).exists(), "a corpus pickle was unpickled"


# --------------------------------------------------------------------------- faults
class ScriptedPipeline:
    """The real tiny pipeline, except that an answer is `max_new_tokens` deltas `delay` s apart,
    optionally failing after the first one; records when a stream starts and is closed."""

    delay = 0.05

    def __init__(self, pipe):
        self._pipe = pipe
        self.fail: Exception | None = None
        self.started, self.closed = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def reset(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.started.clear()
        self.closed.clear()

    def stream(self, question, conditioning=None, *, generation=None, **kwargs):
        self.started.set()
        try:
            for _ in range(int(generation.max_new_tokens)):
                time.sleep(self.delay)
                yield "x"
                if self.fail is not None:
                    raise self.fail
        except GeneratorExit:
            self.closed.set()
            raise


@pytest.fixture(scope="module")
def scripted_app(tiny_pipeline):
    """An in-process app (one generation at a time) around a ScriptedPipeline."""
    pipe = ScriptedPipeline(tiny_pipeline)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = app.build_demo(pipe, concurrency_limit=1)
    demo.queue(max_size=8)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield pipe, f"http://127.0.0.1:{port}/"
    demo.close()


def long_request(tokens: int = 400) -> list:
    """/chat arguments of an answer that takes tokens x 0.05 s (20 s) when nobody stops it."""
    return ["q", [], [], None, [], {"max_new_tokens": tokens}]


def assert_served_promptly(url: str, seconds: float = 5.0) -> None:
    from gradio_client import Client

    start = time.monotonic()
    assert Client(url, verbose=False).predict(*long_request(3), api_name="/chat") == "xxx"
    assert time.monotonic() - start < seconds, "the worker was not freed"


def test_a_cancelled_answer_frees_the_worker(scripted_app):
    from gradio_client import Client

    pipe, url = scripted_app
    pipe.reset()
    job = Client(url, verbose=False).submit(*long_request(), api_name="/chat")
    deadline = time.monotonic() + 10
    while not job.outputs() and time.monotonic() < deadline:  # cancel mid-stream, not before it
        time.sleep(0.05)
    assert job.outputs(), "no streamed output"
    job.cancel()
    assert pipe.closed.wait(5), "the library's stream was not closed"
    assert_served_promptly(url)


def test_a_disconnected_client_frees_the_worker(scripted_app):
    pipe, url = scripted_app
    pipe.reset()
    api = url + "gradio_api/call/chat"
    event_id = httpx.post(api, json={"data": long_request()}).json()["event_id"]
    with httpx.stream("GET", f"{api}/{event_id}", timeout=10) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # first streamed output received: now drop the connection
    assert pipe.started.is_set()
    assert pipe.closed.wait(10), "the stream of a disconnected client was not closed"
    assert_served_promptly(url)


def test_an_exception_inside_generation_leaves_the_app_serving(scripted_app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    pipe, url = scripted_app
    pipe.reset(fail=RuntimeError("CUDA exploded at 0xdeadbeef"))
    with pytest.raises(AppError) as info:
        Client(url, verbose=False).predict(*long_request(), api_name="/chat")
    assert "RuntimeError" in str(info.value) and "0xdeadbeef" not in str(info.value)  # details stay in the log
    pipe.reset()
    assert_served_promptly(url)


# --------------------------------------------------------------------------- partial weights
@pytest.fixture()
def tiny_files(tmp_path, tiny_pipeline):
    """Copies of the tiny preset's converted folder and ImageBind file, free to damage."""
    from demo.pipeline import ensure_tiny

    converted = ensure_tiny()
    shutil.copytree(converted, tmp_path / "converted")
    release = converted.parent / "release"
    shutil.copy(release / "imagebind_w3D.pth", tmp_path / "imagebind_w3D.pth")
    shutil.copy(release / "encoder_config.json", tmp_path / "encoder_config.json")
    return tmp_path


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["truncated shard", "truncated adapter", "missing shard", "truncated index"])
def test_a_partial_converted_folder_is_reported_with_the_fix(tiny_files, damage):
    from demo.errors import WeightsError
    from demo.model import ImageBindLLM

    folder = tiny_files / "converted"
    shard = next((folder / "llm").glob("model-*.safetensors"))
    {"truncated shard": lambda: cut_in_half(shard), "truncated adapter": lambda: cut_in_half(folder / "adapter.safetensors"),
     "missing shard": shard.unlink, "truncated index": lambda: cut_in_half(folder / "llm/model.safetensors.index.json"),
     }[damage]()
    with pytest.raises(WeightsError, match="convert again") as info:
        ImageBindLLM.from_pretrained(folder, device="cpu")
    assert "llm" in str(info.value) or "adapter" in str(info.value)  # names the file


def test_a_truncated_imagebind_checkpoint_is_reported_with_the_fix(tiny_files):
    from demo.encoders.encoder import MultimodalEncoder
    from demo.errors import WeightsError

    checkpoint = tiny_files / "imagebind_w3D.pth"
    cut_in_half(checkpoint)
    with pytest.raises(WeightsError, match=r"imagebind_w3D\.pth.*incomplete.*ibllm download"):
        MultimodalEncoder.from_pretrained(checkpoint, device="cpu")


# --------------------------------------------------------------------------- cancellation and running work
class SlowToken:
    """A CancelToken whose checks take `pause` seconds: encoding with it takes a known while."""

    def __new__(cls, pause: float):
        from demo.cancel import CancelToken

        class Slow(CancelToken):
            def check(self) -> None:
                time.sleep(pause)
                super().check()

        return Slow()


def test_a_cancelled_encoding_holds_its_slot_until_it_really_stops(tiny_pipeline):
    from demo.errors import Cancelled
    from demo.pipeline import InputItem

    image = [InputItem("image", str(ROOT / "examples" / "chelsea.png"))]
    tiny_pipeline.encode(image)  # warm: the vision tower is placed
    first, events = SlowToken(0.3), {}

    def cancelled_request() -> None:
        try:
            tiny_pipeline.encode(image, cancel=first)
        except Cancelled:
            events["first stopped"] = time.monotonic()

    thread = threading.Thread(target=cancelled_request)
    thread.start()
    time.sleep(0.5)  # the first request is inside its encoding...
    first.cancel()  # ... when its user presses Stop: the server's queue frees its place at once
    events["cancelled"] = time.monotonic()
    tiny_pipeline.encode(image)  # the next request: must not run beside the first one's work
    events["second done"] = time.monotonic()
    thread.join()
    assert "first stopped" in events, "the cancelled request did not stop"
    assert events["second done"] > events["first stopped"], events  # it waited for the slot
    assert events["first stopped"] - events["cancelled"] < 1.0  # stopped at its next check (0.3 s)


def test_a_request_waiting_for_a_slot_stops_waiting_when_cancelled(tiny_pipeline):
    from demo.cancel import CancelToken
    from demo.errors import Cancelled
    from demo.pipeline import InputItem

    image = [InputItem("image", str(ROOT / "examples" / "chelsea.png"))]
    busy = threading.Thread(target=tiny_pipeline.encode, args=(image,), kwargs={"cancel": SlowToken(0.3)})
    busy.start()
    time.sleep(0.2)
    waiting = CancelToken()
    threading.Timer(0.3, waiting.cancel).start()
    start = time.monotonic()
    with pytest.raises(Cancelled):
        tiny_pipeline.encode(image, cancel=waiting)
    assert time.monotonic() - start < 1.0 and busy.is_alive()  # gave up waiting; the other still runs
    busy.join()


def test_a_bad_input_is_named_by_index_and_display_name(tiny_pipeline, tmp_path):
    from demo.errors import BadInputError
    from demo.pipeline import InputItem

    folder = tmp_path / "gradio" / "5e1c0ffee"
    folder.mkdir(parents=True)
    bad = folder / "song\u202egnp.wav"
    bad.write_bytes(b"RIFF garbage" * 40)
    image = InputItem("image", str(ROOT / "examples" / "chelsea.png"))
    with pytest.raises(BadInputError) as info:
        tiny_pipeline.encode([image, InputItem("audio", str(bad), name="my song.wav"), image])
    error = info.value
    assert (error.index, error.name) == (1, "my song.wav")
    assert str(error).startswith("my song.wav: not a readable audio file")
    assert str(tmp_path) not in str(error) and "gradio" not in str(error)


# --------------------------------------------------------------------------- prompt size
def test_history_is_counted_with_its_template_in_few_tokenisations(tiny_pipeline, monkeypatch):
    from demo.prompt import format_prompt

    tokenizer = tiny_pipeline.model.tokenizer
    encode, texts = tokenizer.encode, []

    def counting_encode(text, *args, **kwargs):
        texts.append(text)
        assert len(texts) <= 30, "prompt_ids tokenised the prompt once per dropped turn (quadratic)"
        return encode(text, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "encode", counting_encode)
    # 8,000 one-letter turns: 16,000 characters of text, within the budget without the template;
    # this held the only worker 225 s.
    start = time.monotonic()
    ids, dropped = tiny_pipeline.prompt_ids("question", [("q", "a")] * 8000, max_new_tokens=16)
    assert time.monotonic() - start < 5
    assert len(ids) + 16 <= tiny_pipeline.model.context_length
    limit = tiny_pipeline.limits.prompt_max_chars + len(format_prompt("", None, []))
    assert all(len(text) <= limit for text in texts), "the character budget ignored the template"
    # The kept turns are the most turns that fit: one more does not.
    more = format_prompt("question", None, [("q", "a")] * (8000 - dropped + 1))
    assert dropped == 8000 or len(encode(more, add_special_tokens=False)) + 1 + 16 > tiny_pipeline.model.context_length
