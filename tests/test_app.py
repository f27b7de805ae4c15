"""The web app's handlers called as plain functions, and a gradio_client round trip.

The pipeline is the real offline `tiny` preset (random weights): answers are meaningless, so the
tests check plumbing (what reaches the library, what reaches the UI), never answer content.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

import app
from demo.errors import DemoError, PromptTooLongError
from demo.modalities import MODALITIES

EXAMPLES = Path(app.__file__).parent / "examples"
IMAGE, AUDIO, CLOUD = EXAMPLES / "chelsea.png", EXAMPLES / "speech.wav", EXAMPLES / "mug.ply"
FAST = {"max_new_tokens": 6, "temperature": 0.0, "top_p": 0.75}


class RecordingPipeline:
    """Wraps the real pipeline; records stream() calls and whether their iterator was closed."""

    def __init__(self, pipe, fail_with: Exception | None = None):
        self._pipe, self._fail_with = pipe, fail_with
        self.calls: list[dict] = []
        self.closed = False

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def stream(self, question, cond, **kwargs):
        self.calls.append({"question": question, **kwargs})
        if self._fail_with is not None:
            raise self._fail_with
        try:
            yield from self._pipe.stream(question, cond, **kwargs)
        except GeneratorExit:
            self.closed = True
            raise


def with_answer(chat, text="answer"):
    return chat + [{"role": "assistant", "content": text}]


def encoded(pipe, mix):
    """The per-session conditioning state as the UI builds it before answering."""
    return app.ensure_conditioning(pipe, mix, app.default_cache_settings(pipe), None)


def next_on_a_new_thread(generator):
    result = []
    worker = threading.Thread(target=lambda: result.append(next(generator, None)))
    worker.start()
    worker.join()
    return result[0]


def final(generator):
    last = None
    for last in generator:
        pass
    return last


# --------------------------------------------------------------------------- the input mix
def test_add_remove_reweight_inputs():
    mix, layout, cleared = app.add_inputs([str(IMAGE), str(AUDIO)], [], 0, modality="image")
    assert cleared is None and layout == 1
    assert [(i["modality"], i["name"], i["weight"]) for i in mix] == [("image", "chelsea.png", 1.0), ("image", "speech.wav", 1.0)]
    mix = app.set_weight(mix, -0.5, item_id=mix[1]["id"])
    assert mix[1]["weight"] == -0.5 and mix[0]["weight"] == 1.0
    mix, layout = app.remove_input(mix, layout, item_id=mix[0]["id"])
    assert [i["name"] for i in mix] == ["speech.wav"] and layout == 2
    assert app.add_inputs(None, mix, layout, modality="audio") == (mix, layout, None)  # widget cleared
    assert app.clear_inputs(layout) == ([], 3)


def test_input_count_is_bounded():
    mix = [app.new_item("image", str(IMAGE)) for _ in range(app.MAX_INPUTS - 1)]
    with pytest.warns(UserWarning, match="At most"):
        mix, _, _ = app.add_inputs([str(IMAGE)] * 3, mix, 0, modality="image")
    assert len(mix) == app.MAX_INPUTS


def test_typed_text_becomes_a_text_input():
    mix, layout, box = app.add_typed_text("  a red bicycle  ", [], 0)
    assert box == "" and layout == 1 and mix[0]["modality"] == "text"
    assert Path(mix[0]["path"]).read_text() == "a red bicycle"
    with pytest.raises(gr.Error):
        app.add_typed_text("   ", [], 0)


def test_refresh_shows_the_library_mix_with_normalised_weights(tiny_pipeline):
    mix = [app.new_item("image", str(IMAGE), 1.0), app.new_item("audio", str(AUDIO), 0.5)]
    cache = app.default_cache_settings(tiny_pipeline)
    kept, layout, cond_state, summary, neighbours = app.refresh_conditioning(tiny_pipeline, mix, 4, cache, None)
    assert kept == mix and layout == 4 and cond_state["cond"] is not None
    assert "chelsea.png" in summary and "speech.wav" in summary
    shares = [share for _, _, share in cond_state["cond"].mix]
    assert shares == pytest.approx([2 / 3, 1 / 3], abs=1e-3)  # the library normalises the weights
    # Unchanged inputs are not encoded again.
    again = app.refresh_conditioning(tiny_pipeline, mix, 4, cache, cond_state)
    assert again[2] is cond_state


def test_a_corrupt_upload_is_dropped_with_its_message_and_the_rest_still_works(tiny_pipeline, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    mix = [app.new_item("image", str(IMAGE)), app.new_item("image", str(broken))]
    cache = app.default_cache_settings(tiny_pipeline)
    with pytest.warns(UserWarning, match="broken.png"):
        kept, layout, cond_state, summary, _ = app.refresh_conditioning(tiny_pipeline, mix, 0, cache, None)
    assert [i["name"] for i in kept] == ["chelsea.png"] and layout == 1  # re-render the slider list
    assert cond_state["cond"] is not None and "chelsea.png" in summary
    chat = final(app.stream_answer(tiny_pipeline, [{"role": "user", "content": "hi"}], "", FAST, cond_state))
    assert chat[-1]["role"] == "assistant"


def test_mix_error_that_no_single_input_explains_keeps_the_mix(tiny_pipeline):
    # Weights cancelling out is a property of the mix; the message is the library's.
    mix = [app.new_item("image", str(IMAGE), 0.5), app.new_item("image", str(IMAGE), -0.5)]
    try:
        tiny_pipeline.encode(app.input_items(mix))
    except DemoError as exc:
        expected = str(exc)
    else:
        pytest.skip("the library accepts weights that sum to zero")
    kept, _, cond_state, summary, _ = app.refresh_conditioning(
        tiny_pipeline, mix, 0, app.default_cache_settings(tiny_pipeline), None)
    assert kept == mix and cond_state["cond"] is None and expected in summary
    with pytest.raises(gr.Error, match=expected[:30]):
        app.ensure_conditioning(tiny_pipeline, mix, app.default_cache_settings(tiny_pipeline), cond_state)


# --------------------------------------------------------------------------- chat
def test_stream_answer_streams_and_passes_history_and_settings(tiny_pipeline):
    pipe = RecordingPipeline(tiny_pipeline)
    cond_state = encoded(tiny_pipeline, [app.new_item("image", str(IMAGE))])
    chat = [{"role": "user", "content": "first?"}, {"role": "assistant", "content": "first answer"}]
    chat, box = app.add_user_turn("  second?  ", chat)
    assert box == ""
    updates = list(app.stream_answer(pipe, chat, "some context", {**FAST, "max_new_tokens": 8}, cond_state))
    assert updates, "no streamed update"
    answers = [u[-1]["content"] for u in updates]
    assert all(u[:-1] == chat for u in updates) and all(u[-1]["role"] == "assistant" for u in updates)
    assert all(later.startswith(earlier) for earlier, later in zip(answers, answers[1:]) if earlier != "_(empty answer)_")
    (call,) = pipe.calls
    assert call["question"] == "second?" and call["history"] == [("first?", "first answer")]
    assert call["input_text"] == "some context"
    assert (call["generation"].max_new_tokens, call["generation"].temperature) == (8, 0.0)


def test_the_answer_is_the_same_however_gradio_advances_the_stream(tiny_pipeline):
    # Gradio calls next() on any free worker thread; the answer must not depend on it.
    cond_state = encoded(tiny_pipeline, [app.new_item("image", str(IMAGE))])
    chat = [{"role": "user", "content": "hi"}]
    settings = {**FAST, "max_new_tokens": 24}
    one_thread = list(app.stream_answer(tiny_pipeline, chat, "", settings, cond_state))[-1]
    answer, last = app.stream_answer(tiny_pipeline, chat, "", settings, cond_state), None
    while (update := next_on_a_new_thread(answer)) is not None:
        last = update
    assert last == one_thread


def test_gradio6_message_parts_are_read_as_text():
    # What Chatbot.preprocess hands back in Gradio 6: content as a list of parts.
    chat = [{"role": "user", "content": [{"type": "text", "text": "q1"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a1"}]},
            {"role": "user", "content": [{"type": "text", "text": "q2"}]}]
    assert app.history_pairs(chat[:-1]) == [("q1", "a1")]
    assert app.message_text(chat[-1]) == "q2"


def test_stop_closes_the_library_stream(tiny_pipeline):
    pipe = RecordingPipeline(tiny_pipeline)
    cond_state = encoded(tiny_pipeline, [])
    answer = app.stream_answer(pipe, [{"role": "user", "content": "hi"}], "", {**FAST, "max_new_tokens": 64}, cond_state)
    next(answer)
    answer.close()  # what Gradio does to a cancelled generator
    assert pipe.closed


def test_library_errors_reach_the_ui_with_their_message(tiny_pipeline):
    cond_state = encoded(tiny_pipeline, [])
    chat = [{"role": "user", "content": "hi"}]
    with pytest.raises(gr.Error, match="temperature"):
        list(app.stream_answer(tiny_pipeline, chat, "", {**FAST, "temperature": 5.0}, cond_state))
    too_long = PromptTooLongError("the prompt is 9000 tokens; the model reads at most 512")
    with pytest.raises(gr.Error, match="9000 tokens"):
        list(app.stream_answer(RecordingPipeline(tiny_pipeline, fail_with=too_long), chat, "", FAST, cond_state))


def test_unexpected_errors_are_logged_and_shown_short(tiny_pipeline, caplog):
    cond_state = encoded(tiny_pipeline, [])
    pipe = RecordingPipeline(tiny_pipeline, fail_with=RuntimeError("CUDA exploded at 0xdeadbeef"))
    with caplog.at_level(logging.ERROR, logger="ibllm.app"), pytest.raises(gr.Error) as info:
        list(app.stream_answer(pipe, [{"role": "user", "content": "hi"}], "", FAST, cond_state))
    assert "0xdeadbeef" not in info.value.message and "RuntimeError" in info.value.message
    assert "0xdeadbeef" in caplog.text  # the details go to the server log


def test_regenerate_undo_clear():
    chat = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    assert app.drop_last_answer(chat) == chat[:3]
    assert app.undo_last_turn(chat) == (chat[:2], "q2")
    assert app.undo_last_turn(chat[:3]) == (chat[:2], "q2")  # a question whose answer was stopped
    assert app.clear_chat() == ([], "")
    with pytest.raises(gr.Error):
        app.drop_last_answer([])
    with pytest.raises(gr.Error):
        app.add_user_turn("   ", chat)


# --------------------------------------------------------------------------- API handler, examples, 3D, CLI
def test_api_chat_checks_its_arguments(tiny_pipeline):
    with pytest.raises(gr.Error, match="one modality and one weight per file"):
        list(app.api_chat(tiny_pipeline, "q", [str(IMAGE)], ["image", "audio"], None, None, None))
    with pytest.raises(gr.Error, match="unknown modality"):
        list(app.api_chat(tiny_pipeline, "q", [str(IMAGE)], "photo", None, None, None))
    answer = final(app.api_chat(tiny_pipeline, "q", [str(IMAGE), str(AUDIO)], ["image", "audio"], [1, 0.5],
                                [["q0", "a0"]], {**FAST, "input": "ctx"}))
    assert isinstance(answer, str)


def test_examples_cover_every_modality_and_a_mix():
    rows = app.available_examples(EXAMPLES)
    covered = {m for row in rows for m, _, _ in row["inputs"]}
    assert covered == set(MODALITIES), f"no example for {set(MODALITIES) - covered}"
    assert any({"image", "audio"} <= {m for m, _, _ in row["inputs"]} for row in rows)
    mix, layout = app.load_example(rows[0]["title"], 3, examples=rows)
    assert layout == 4 and all(Path(item["path"]).is_file() for item in mix)


def test_examples_skip_missing_files(tmp_path):
    (tmp_path / "chelsea.png").write_bytes(IMAGE.read_bytes())
    titles = [row["title"] for row in app.available_examples(tmp_path)]
    assert titles == ["Image: a cat"]


def test_point_cloud_preview(tmp_path):
    points = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    np.save(tmp_path / "cloud.npy", points)
    mix = [app.new_item("image", str(IMAGE)), app.new_item("point", str(tmp_path / "cloud.npy"))]
    preview = Path(app.point_cloud_view(mix))
    header = preview.read_bytes()[:200]
    assert preview.suffix == ".ply" and b"element vertex 200" in header
    assert app.point_cloud_view(mix[:1]) is None
    assert b"element vertex" in Path(app.point_cloud_preview_file(str(CLOUD))).read_bytes()[:200]
    (tmp_path / "bad.npy").write_bytes(b"nope")
    assert app.point_cloud_preview_file(str(tmp_path / "bad.npy")) is None  # best effort, no crash


def test_command_line(monkeypatch, capsys):
    for name in ("IBLLM_WEIGHTS", "IBLLM_PRESET", "IBLLM_QUANT", "IBLLM_CACHE", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert (args.weights, args.host, args.share, args.concurrency) == (app.default_preset(), "127.0.0.1", False, 1)
    assert not (args.load_in_8bit or args.load_in_4bit) and args.cache is None
    monkeypatch.setenv("SPACE_ID", "someone/ibllm")
    monkeypatch.setenv("IBLLM_WEIGHTS", "/data/weights")
    monkeypatch.setenv("IBLLM_QUANT", "4bit")
    monkeypatch.setenv("IBLLM_CACHE", "/data/cache")
    args = app.parse_args([])
    assert (args.weights, args.host, args.load_in_4bit, args.cache) == ("/data/weights", "0.0.0.0", True, "/data/cache")
    assert app.parse_args(["--host", "127.0.0.1", "--weights", "tiny"]).host == "127.0.0.1"
    with pytest.raises(SystemExit) as exit_info:
        app.parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--weights", "--load-in-8bit", "--load-in-4bit", "--dtype", "--device", "--host", "--port",
                 "--cache", "--share", "--concurrency", "--max-queue", "--max-file-size", "IBLLM_QUANT"):
        assert flag in help_text


def test_build_demo_shows_the_placeholder_banner_and_names_the_api(tiny_pipeline):
    demo = app.build_demo(tiny_pipeline)
    config = demo.get_config_file()
    texts = " ".join(str(c.get("props", {}).get("value", "")) for c in config["components"])
    assert tiny_pipeline.is_placeholder and "answers" in texts and "meaningless" in texts
    api_names = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert "chat" in api_names


# --------------------------------------------------------------------------- over HTTP
def test_gradio_client_round_trip_streams_an_image_audio_answer(app_url, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    job = client.submit("What is going on?", [handle_file(str(IMAGE)), handle_file(str(AUDIO))],
                        ["image", "audio"], [1.0, 0.5], [["Hi", "Hello!"]], {**FAST, "max_new_tokens": 8},
                        api_name="/chat")
    streamed = [output for output in job]
    assert streamed, "no streamed output"
    answer = job.result()
    assert isinstance(answer, str) and answer == streamed[-1]
    assert all(later.startswith(earlier) for earlier, later in zip(streamed, streamed[1:]))

    # A bad file is this request's error, with the library's message; the next request works.
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        client.predict("q", [handle_file(str(bad))], "image", None, None, FAST, api_name="/chat")
    assert "broken.png" in str(info.value)
    assert isinstance(client.predict("q", [], [], None, None, FAST, api_name="/chat"), str)
