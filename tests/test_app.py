"""The web app's handlers called as plain functions, the built Blocks, and a gradio_client round trip.

The pipeline is the real offline `tiny` preset (random weights): answers are meaningless, so the
tests check plumbing (what reaches the library, what reaches the UI), never answer content.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import gradio as gr
import pytest

import app
import app_handlers as h
from demo.chat_session import is_note, new_input
from demo.errors import Cancelled, PromptTooLongError
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


class CancellablePipeline(RecordingPipeline):
    """encode() takes `cancel=` (as the hardened library does) and waits until it is cancelled."""

    def __init__(self, pipe):
        super().__init__(pipe)
        self.started, self.token = threading.Event(), None

    def encode(self, inputs=(), cache=None, cancel=None):
        self.token = cancel
        self.started.set()
        for _ in range(500):
            cancel.check()
            threading.Event().wait(0.01)
        return self._pipe.encode(inputs, cache)


def _is_skip(value) -> bool:
    return isinstance(value, dict) and value == gr.skip()


def send(pipe, text, chat=None, mix=None, files=(), mode=h.KEEP, roles="", generation=FAST, cond=None):
    """Run one Send to the end; return the last (chat, box, mix, layout, cond) with skips resolved."""
    state = [list(chat or []), None, list(mix or []), 0, cond]
    for update in h.respond(pipe, {"text": text, "files": [str(f) for f in files]}, state[0], state[2], 0, cond,
                            mode, roles, "", generation, {}):
        state = [old if _is_skip(new) else new for old, new in zip(state, update)]
    return state


# --------------------------------------------------------------------------- a turn
def test_a_turn_shows_its_files_and_the_mix_it_used_then_streams_the_answer(tiny_pipeline):
    pipe = RecordingPipeline(tiny_pipeline)
    updates = list(h.respond(pipe, {"text": " What is it? ", "files": [str(IMAGE), str(AUDIO)]}, [], [], 0, None,
                             h.KEEP, '{"speech.wav": ["audio", 0.5]}', "ctx", FAST, {}))
    first_chat, box = updates[0][0], updates[0][1]
    assert box["value"] == {"text": "", "files": []} and box["stop_btn"] is True  # accepted: Send became Stop
    assert first_chat[0]["role"] == "user" and first_chat[0]["content"][0] == "What is it?"
    assert [p["alt_text"] for p in first_chat[0]["content"][1:]] == ["chelsea.png", "speech.wav"]
    chat, box, mix, layout, cond = updates[-1]
    note = chat[1]
    assert "(2 new, 0 kept from earlier turns): 🖼️ chelsea.png +67% · 🔊 speech.wav +33%" in note["metadata"]["title"]
    assert "chelsea.png · image · weight +1.00 · share +67%" in note["content"]
    assert "speech.wav · audio · weight +0.50 · share +33%" in note["content"]
    assert chat[2]["role"] == "assistant" and box["submit_btn"] is True and layout == 1
    assert [(e.name, e.weight) for e in mix] == [("chelsea.png", 1.0), ("speech.wav", 0.5)]
    (call,) = pipe.calls
    assert call["question"] == "What is it?" and call["input_text"] == "ctx" and call["history"] == []

    # A follow-up keeps the mix (and reuses its encoding); its note says so; history has turn 1.
    chat2, _, mix2, _, cond2 = send(pipe, "And now?", chat, mix, cond=cond)
    assert "0 new, 2 kept" in chat2[4]["metadata"]["title"] and cond2 is cond and mix2 == mix
    assert pipe.calls[-1]["history"] == [("What is it?", chat[2]["content"])]
    # "Replace the mix": only the new message's files.
    chat3, _, mix3, _, _ = send(pipe, "Only this?", chat2, mix2, files=[IMAGE], mode=h.REPLACE, cond=cond2)
    assert [e.name for e in mix3] == ["chelsea.png"] and "1 new, 0 kept" in chat3[-2]["metadata"]["title"]


def test_refused_messages_keep_the_conversation_and_the_text(tiny_pipeline):
    chat = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    for text in ("", "   ", "x" * (tiny_pipeline.limits.prompt_max_chars + 1)):
        with pytest.warns(UserWarning):
            updates = list(h.respond(tiny_pipeline, {"text": text, "files": []}, chat, [], 0, None, h.KEEP, "", "",
                                     FAST, {}))
        assert len(updates) == 1 and all(u == gr.skip() for u in updates[0])  # nothing stored, nothing changed
    # A failure after acceptance: the turn is removed and the question goes back into the box.
    failing = RecordingPipeline(tiny_pipeline, fail_with=PromptTooLongError("the prompt is 9000 tokens"))
    with pytest.warns(UserWarning, match="9000 tokens"):
        final_chat, box, *_ = send(failing, "too long?", chat)
    assert final_chat == chat and box["value"] == {"text": "too long?", "files": []}


def test_settings_from_the_session_are_checked_server_side(tiny_pipeline):
    with pytest.warns(UserWarning, match="temperature"):
        updates = list(h.respond(tiny_pipeline, {"text": "hi"}, [], [], 0, None, h.KEEP, "", "",
                                 {**FAST, "temperature": 5.0}, {}))
    assert all(u == gr.skip() for u in updates[0])


def test_a_bad_file_is_dropped_with_a_message_and_the_turn_answered(tiny_pipeline, tmp_path):
    upload = tmp_path / "gradio" / "0123abcd"
    upload.mkdir(parents=True)
    broken = upload / "evil\u202egnp.png"
    broken.write_bytes(b"not an image")
    with pytest.warns(UserWarning) as toasts:
        chat, _, mix, _, _ = send(tiny_pipeline, "What is it?", files=[IMAGE, broken])
    texts = " ".join(str(t.message) for t in toasts)
    assert "evilgnp.png" in texts and str(upload) not in texts and "\u202e" not in texts
    assert [e.name for e in mix] == ["chelsea.png"] and chat[-1]["role"] == "assistant"
    assert "(1 new, 0 kept from earlier turns): 🖼️ chelsea.png +100%" in chat[-2]["metadata"]["title"]


def test_stop_and_closing_the_tab_cancel_the_encoding(tiny_pipeline):
    pipe = CancellablePipeline(tiny_pipeline)
    turn = h.respond(pipe, {"text": "hi", "files": [str(IMAGE)]}, [], [], 0, None, h.KEEP, "", "", FAST, {})
    next(turn)  # the turn is accepted; encoding starts on a worker thread
    assert pipe.started.wait(10)
    turn.close()  # what Gradio does to a cancelled generator
    assert pipe.token.cancelled
    with pytest.raises(Cancelled):
        pipe.token.check()
    chat, box = h.stopped([{"role": "assistant", "content": "…", "metadata": {"title": "⏳", "status": "pending"}}])
    assert chat[0]["metadata"]["title"] == "⏹️ Stopped" and box["submit_btn"] is True


def test_stop_closes_the_library_stream(tiny_pipeline):
    pipe = RecordingPipeline(tiny_pipeline)
    turn = h.respond(pipe, {"text": "hi"}, [], [], 0, None, h.KEEP, "", "", {**FAST, "max_new_tokens": 64}, {})
    while not pipe.calls:
        next(turn)
    next(turn)
    turn.close()
    assert pipe.closed


def test_unexpected_errors_are_logged_and_shown_short(tiny_pipeline, caplog):
    pipe = RecordingPipeline(tiny_pipeline, fail_with=RuntimeError("CUDA exploded at 0xdeadbeef"))
    with caplog.at_level(logging.INFO, logger="ibllm.app"), pytest.warns(UserWarning) as toasts:
        send(pipe, "hi")
    assert "0xdeadbeef" not in str(toasts[0].message) and "RuntimeError" in str(toasts[0].message)
    assert "0xdeadbeef" in caplog.text  # the details go to the server log
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ibllm.app"), pytest.warns(UserWarning):
        send(tiny_pipeline, "")  # a user's mistake: one line, no traceback
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is None


def test_regenerate_undo_export(tiny_pipeline):
    chat, _, mix, _, cond = send(tiny_pipeline, "q1", files=[IMAGE])
    again = list(h.respond(tiny_pipeline, None, chat, mix, 1, cond, h.KEEP, "", "", FAST, {}, retry=True))[-1][0]
    assert len(again) == 3 and again[0] == chat[0] and again[2]["role"] == "assistant"
    assert h.undo(chat) == ([], {"text": "q1", "files": []})
    text = Path(h.export_chat(chat)).read_text()
    assert "**You:** q1" in text and "chelsea.png" in text and "share +100%" in text
    assert h.export_chat([]) is None


# --------------------------------------------------------------------------- the mix panel
def test_weights_are_clamped_visibly_and_every_share_updates():
    mix = [new_input(IMAGE), new_input(AUDIO)]
    updated, share_a, share_b, slider = h.set_weight(mix, 0.5, item_id=mix[1].id)
    assert (share_a, share_b) == ("+67%", "+33%") and slider == gr.skip() and updated[1].weight == 0.5
    updated, share_a, share_b, slider = h.set_weight(mix, 7, item_id=mix[1].id)  # typed 7: the box shows 1
    assert slider == 1.0 and updated[1].weight == 1.0 and share_b == "+50%"
    for junk in (None, "x", float("nan"), True):  # a half-typed "-", or a hostile client (no preprocessing)
        assert all(u == gr.skip() for u in h.set_weight(mix, junk, item_id=mix[0].id))


def test_typed_text_lives_in_a_temp_file_deleted_with_the_input(tiny_pipeline):
    mix, layout, box = h.add_text(tiny_pipeline, "  a red bicycle ", [], 0)
    path = Path(mix[0].path)
    assert box == "" and layout == 1 and mix[0].modality == "text" and path.read_text() == "a red bicycle"
    mix, layout = h.remove_input(mix, layout, item_id=mix[0].id)
    assert mix == [] and not path.exists()
    with pytest.warns(UserWarning):
        assert h.add_text(tiny_pipeline, "  ", [], 0) == (gr.skip(),) * 3


def test_inputs_per_session_are_bounded(tiny_pipeline):
    mix = [new_input(IMAGE) for _ in range(h.MAX_INPUTS)]
    with pytest.warns(UserWarning, match="at most"):
        updates = list(h.respond(tiny_pipeline, {"text": "q", "files": [str(AUDIO)]}, [], mix, 0, None, h.KEEP,
                                 "", "", FAST, {}))
    assert all(u == gr.skip() for u in updates[0])


def test_modality_buttons_attach_files_with_their_modality():
    box, roles = h.attach_to_box([str(EXAMPLES / "depth.png")], {"text": "hi", "files": [str(IMAGE)]}, "", "depth")
    assert box == {"text": "hi", "files": [str(IMAGE), str(EXAMPLES / "depth.png")]}
    assert '"depth.png": ["depth", 1.0]' in roles


# --------------------------------------------------------------------------- the page
def config_texts(demo) -> str:
    return " ".join(str(c.get("props", {}).get(k, "")) for c in demo.get_config_file()["components"]
                    for k in ("value", "label", "samples", "example_labels"))


def test_examples_world_first_and_real_ones_hidden_on_the_pocket_model(tiny_pipeline):
    real, world = app.available_examples(kind="real"), app.available_examples(kind="world")
    covered = {m for row in real for m, _, _ in row["inputs"]}
    assert covered == set(MODALITIES), f"no example for {set(MODALITIES) - covered}"
    text = next(row for row in world if row["title"] == "World: text")  # world-2.txt was answered wrongly
    assert text["question"] == "What shape is this?" and text["inputs"] == [("text", str(EXAMPLES / "world/world-1.txt"), 1.0)]
    assert [row["kind"] for row in app.available_examples()] == ["world"] * len(world) + ["real"] * len(real)
    texts = config_texts(app.build_demo(tiny_pipeline))
    assert texts.index("Pocket-world examples") < texts.index("Examples for the real")
    pocket_texts = config_texts(app.build_demo(tiny_pipeline, world_model=True))
    assert "Pocket-world examples" in pocket_texts and "Examples for the real" not in pocket_texts


def test_pocket_model_answers_greedily_by_default(tiny_pipeline):
    def temperature(demo):
        return next(c["props"]["value"] for c in demo.get_config_file()["components"]
                    if c["props"].get("label") == "Temperature (0 = greedy)")
    assert temperature(app.build_demo(tiny_pipeline, world_model=True)) == 0.0
    assert temperature(app.build_demo(tiny_pipeline)) == tiny_pipeline.generation_defaults.temperature


def test_the_api_page_documents_chat_only_with_real_names_and_values(tiny_pipeline):
    demo = app.build_demo(tiny_pipeline)
    assert not demo.analytics_enabled  # off unless GRADIO_ANALYTICS_ENABLED=True
    info = demo.get_api_info()["named_endpoints"]
    assert list(info) == ["/chat", "/imagine"]  # helper endpoints (and the UI's own Imagine) hidden
    imagine = info["/imagine"]
    assert imagine["description"].startswith("Make a picture of what the model sees")
    assert [p["parameter_name"] for p in imagine["parameters"]] == ["prompt", "files", "modalities", "weights", "settings"]
    assert {p["parameter_name"]: p["example_input"] for p in imagine["parameters"]}["settings"]["seed"] == 42
    assert "foo" not in str(imagine)
    chat = info["/chat"]
    assert chat["description"].startswith("Answer a question about any number of files")
    names = [p["parameter_name"] for p in chat["parameters"]]
    assert names == ["question", "files", "modalities", "weights", "history", "settings"]
    examples = {p["parameter_name"]: p["example_input"] for p in chat["parameters"]}
    assert examples["weights"] == [1.0, 0.5] and "foo" not in str(examples)
    texts = config_texts(demo)
    assert tiny_pipeline.is_placeholder and "meaningless" in texts


def test_examples_skip_missing_files(tmp_path):
    (tmp_path / "chelsea.png").write_bytes(IMAGE.read_bytes())
    assert [row["title"] for row in app.available_examples(tmp_path)] == ["Image: a cat"]


def test_command_line(monkeypatch, capsys):
    for name in ("IBLLM_WEIGHTS", "IBLLM_PRESET", "IBLLM_QUANT", "IBLLM_CACHE", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert (args.weights, args.host, args.share, args.concurrency) == (app.default_preset(), "127.0.0.1", False, 4)
    monkeypatch.setenv("SPACE_ID", "someone/ibllm")
    monkeypatch.setenv("IBLLM_WEIGHTS", "/data/weights")
    monkeypatch.setenv("IBLLM_QUANT", "4bit")
    args = app.parse_args([])
    assert (args.weights, args.host, args.load_in_4bit) == ("/data/weights", "0.0.0.0", True)
    with pytest.raises(SystemExit) as exit_info:
        app.parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--weights", "--load-in-8bit", "--load-in-4bit", "--dtype", "--device", "--host", "--port",
                 "--cache", "--unclip", "IBLLM_UNCLIP", "--share", "--concurrency", "--max-queue", "--max-file-size", "GRADIO_ANALYTICS_ENABLED"):
        assert flag in help_text
    assert app.is_pocket("pocket") and app.is_pocket(str(app.POCKET_FOLDER)) and not app.is_pocket("tiny")


# --------------------------------------------------------------------------- over HTTP
def test_gradio_client_round_trip_streams_an_image_audio_answer(app_url, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_url, verbose=False)
    job = client.submit("What is going on?", [handle_file(str(IMAGE)), handle_file(str(AUDIO))],
                        ["image", "audio"], [1.0, 0.5], [["Hi", "Hello!"]], {**FAST, "max_new_tokens": 8},
                        api_name="/chat")
    streamed = [output for output in job]
    assert streamed and job.result() == streamed[-1]
    assert all(later.startswith(earlier) for earlier, later in zip(streamed, streamed[1:]))
    # Malformed arguments and bad files: a message naming the problem; the next request works.
    with pytest.raises(AppError, match="unknown settings key 'colour'"):
        client.predict("q", [], None, None, None, {"colour": "red"}, api_name="/chat")
    with pytest.raises(AppError, match="weights must be a list"):
        client.predict("q", [handle_file(str(IMAGE))], "image", 0.5, None, FAST, api_name="/chat")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(AppError) as info:
        client.predict("q", [handle_file(str(bad))], "image", None, None, FAST, api_name="/chat")
    assert "broken.png" in str(info.value) and "/tmp" not in str(info.value) and "gradio" not in str(info.value)
    assert isinstance(client.predict("q", [], None, None, None, FAST, api_name="/chat"), str)


def test_what_the_cache_recalled_is_listed():
    import numpy as np
    import torch

    from demo.cache import RetrievalResult
    from demo.pipeline import Conditioning

    result = RetrievalResult(torch.zeros(4), np.array([[7, 3, -1]]), np.array([[0.9, 0.5, np.nan]], dtype=np.float32),
                         np.zeros((1, 3), dtype=np.float32), [["cone.png", None, None]])
    cond = {"key": "", "cond": Conditioning(torch.zeros(4), torch.zeros(1, 1, 1), neighbours=result)}
    assert h.neighbours_rows(cond) == [[1, 7, 0.9, "cone.png"], [2, 3, 0.5, ""]]
    assert h.neighbours_rows(None) == []


def test_api_unexpected_errors_are_logged_and_reported_short(tiny_pipeline, caplog):
    pipe = RecordingPipeline(tiny_pipeline, fail_with=RuntimeError("CUDA exploded at 0xdeadbeef"))
    with caplog.at_level(logging.ERROR, logger="ibllm.app"), pytest.raises(gr.Error) as info:
        list(h.api_chat(pipe, "q", [], None, None, None, FAST))
    assert "RuntimeError" in info.value.message and "0xdeadbeef" not in info.value.message
    assert "0xdeadbeef" in caplog.text


def test_the_startup_log_names_the_model_served(tiny_pipeline, monkeypatch, caplog):
    served = {}

    class NoServer:
        def queue(self, **kwargs):
            return self

        def launch(self, **kwargs):
            served.update(kwargs)

        def block_thread(self):
            pass

    monkeypatch.setattr(app, "load_pipeline", lambda args: tiny_pipeline)
    monkeypatch.setattr(app, "build_demo", lambda pipe, **kwargs: served.update(kwargs) or NoServer())
    with caplog.at_level(logging.INFO, logger="ibllm.app"):
        app.main(["--weights", "tiny", "--port", "7999", "--no-openai-api"])
    assert "serving model tiny (random placeholder weights; visual cache off; image output off)" in caplog.text
    assert served["world_model"] is False and served["server_port"] == 7999


# --------------------------------------------------------------------------- pictures (Imagine)
PICTURE = ("", 2, 10.0, 0, 7, "48x32")  # negative prompt, steps, guidance, noise level, seed, size: fast on the tiny model


class SlowSteps:
    """Wraps a pipeline: each denoising step reports, then waits, so the UI's progress shows."""

    def __init__(self, pipe, wait: float = 0.4):
        self._pipe, self.wait, self.token = pipe, wait, None

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def imagine(self, inputs, *, progress=None, cancel=None, **kwargs):
        self.token = cancel

        def slow(k, n):
            progress(k, n)
            threading.Event().wait(self.wait)
        return self._pipe.imagine(inputs, progress=slow, cancel=cancel, **kwargs)


def imagine(pipe, text, files=(), mix=None, mode=h.KEEP, picture=PICTURE):
    """Run one Imagine click to the end: (every update, the last (chat, box, mix, layout) with skips resolved)."""
    state, updates = [[], None, list(mix or []), 0], []
    for update in h.imagine_turn(pipe, {"text": text, "files": [str(f) for f in files]}, [], state[2], 0, mode, "",
                                 {}, *picture):
        updates.append(update)
        if update[0] and not _is_skip(update[0]):
            # Gradio copies the picture into its cache as the turn is sent: read it now, as that copy would
            update[0][:] = [{**m, "png": Path(m["content"]["path"]).read_bytes()} if isinstance(m["content"], dict)
                            and m["content"].get("path", "").endswith(".png") else m for m in update[0]]
        state = [old if _is_skip(new) else new for old, new in zip(state, update)]
    return updates, state


def test_imagine_turn_shows_inputs_progress_the_picture_and_its_seed(imagine_pipeline):
    from PIL import Image

    import io

    updates, (chat, box, mix, layout) = imagine(SlowSteps(imagine_pipeline), "a red cube", [IMAGE, AUDIO])
    titles = [(m.get("metadata") or {}).get("title") or "" for u in updates for m in u[0]]
    assert "🎨 Painting… step 1 of 2" in titles  # progress, step k of n, inside the turn
    user, note, picture, seed_note = chat
    assert user["content"][0] == "🎨 Imagine: a red cube" and [p["alt_text"] for p in user["content"][1:]] == \
        ["chelsea.png", "speech.wav"]  # the inputs are in the turn
    assert note["metadata"]["title"].endswith("🖼️ chelsea.png +50% · 🔊 speech.wav +50%")  # and their weights
    image = Image.open(io.BytesIO(picture["png"]))
    assert image.format == "PNG" and image.size == (48, 32)
    assert Path(picture["content"]["path"]).name == "imagebind-llm-seed-7.png"  # the download's name
    assert not Path(picture["content"]["path"]).exists()  # our copy is gone once Gradio has its own
    assert seed_note["metadata"]["title"] == "🎨 Seed 7 · 2 steps · guidance 10 · noise level 0 · 48×32"
    assert "a red cube" in seed_note["content"] and "has no" not in seed_note["content"] and "seed 7 make this picture again" in seed_note["content"]
    assert updates[0][1]["value"] == {"text": "", "files": []} and updates[0][1]["stop_btn"]  # accepted: Send -> Stop
    assert box["submit_btn"] and not box["stop_btn"]  # done: Stop -> Send
    assert [e.name for e in mix] == ["chelsea.png", "speech.wav"] and layout == 1
    # The same seed, inputs and settings: the same picture. A text question afterwards ignores the picture turn.
    assert imagine(imagine_pipeline, "a red cube", [IMAGE, AUDIO])[1][0][2]["png"] == picture["png"]
    retried = list(h.respond(imagine_pipeline, None, chat, mix, 1, None, h.KEEP, "", "", FAST, {}, retry=True))
    assert len(retried) == 1 and all(_is_skip(v) for v in retried[0])  # Regenerate does not answer "🎨 Imagine: ..."
    recording = RecordingPipeline(imagine_pipeline)
    later = send(recording, "What is it?", chat=chat, mix=mix)[0]
    assert later[-1]["role"] == "assistant" and not is_note(later[-1]) and recording.calls[-1]["history"] == []


def test_imagine_seed_minus_one_draws_a_new_replayable_seed(imagine_pipeline):
    seeds = set()
    for _ in range(2):
        chat = imagine(imagine_pipeline, "", [IMAGE], picture=(*PICTURE[:4], -1, "48x32"))[1][0]
        seeds.add(int(chat[-1]["metadata"]["title"].split()[2]))
        assert chat[0]["content"][0] == "🎨 Imagine (no prompt)"
    assert len(seeds) == 2 and all(0 <= s < 2**32 for s in seeds)  # a browser's number box holds it exactly


def test_imagine_without_an_image_model_explains_how_to_get_one(tiny_pipeline, caplog):
    with caplog.at_level(logging.INFO, logger="ibllm.app"):
        updates, _ = imagine(tiny_pipeline, "a cat", [IMAGE])
    assert len(updates) == 1 and all(_is_skip(v) for v in updates[0])  # nothing changes: no turn, text kept
    assert "ibllm download unclip" in caplog.text and "--unclip" in caplog.text
    assert "Traceback" not in caplog.text


def test_imagine_refusals_keep_everything(imagine_pipeline, caplog):
    with caplog.at_level(logging.INFO, logger="ibllm.app"):
        nothing = imagine(imagine_pipeline, "a cat")[0]  # no inputs: nothing to draw from
        bad_size = imagine(imagine_pipeline, "a cat", [IMAGE], picture=(*PICTURE[:5], "33x32"))[0]
    for updates in (nothing, bad_size):
        assert len(updates) == 1 and all(_is_skip(v) for v in updates[0])
    assert "add an image, a sound" in caplog.text and "not a multiple of 8" in caplog.text


def test_stop_cancels_the_picture(imagine_pipeline):
    pipe = SlowSteps(imagine_pipeline, wait=5.0)
    turn = h.imagine_turn(pipe, {"text": "", "files": [str(IMAGE)]}, [], [], 0, h.KEEP, "", {}, *PICTURE)
    for update in turn:
        if any("step 1 of 2" in ((m.get("metadata") or {}).get("title") or "") for m in update[0]):
            break
    turn.close()  # what Gradio does on Stop or a closed tab
    assert pipe.token.cancelled
    chat, box = h.stopped(update[0])
    assert chat[-1]["metadata"]["title"] == "⏹️ Stopped" and box["submit_btn"]


def test_gradio_client_imagine_returns_a_png_and_its_record(imagine_url, app_url):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    client = Client(imagine_url, verbose=False)
    settings = {"steps": 2, "seed": 11, "size": "48x32", "negative_prompt": "blurry"}
    path, record = client.predict("a watercolour", [handle_file(str(IMAGE)), handle_file(str(AUDIO))], None, [1.0, -0.5],
                                  settings, api_name="/imagine")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (48, 32)
    assert record["seed"] == 11 and record["steps"] == 2 and record["negative_prompt"] == "blurry"
    assert [(m["modality"], m["share"]) for m in record["mix"]] == [("image", 0.6667), ("audio", -0.3333)]
    again, _ = client.predict("a watercolour", [handle_file(str(IMAGE)), handle_file(str(AUDIO))], None, [1.0, -0.5],
                              settings, api_name="/imagine")
    assert Path(again).read_bytes() == Path(path).read_bytes()  # same seed, same picture
    with pytest.raises(AppError, match="unknown settings key 'stpes'; known: negative_prompt"):
        client.predict("", [handle_file(str(IMAGE))], None, None, {"stpes": 2}, api_name="/imagine")
    with pytest.raises(AppError, match="steps=0 must be a whole number"):
        client.predict("", [handle_file(str(IMAGE))], None, None, {"steps": 0}, api_name="/imagine")
    # Without an image model: a plain explanation, no traceback.
    with pytest.raises(AppError, match="ibllm download unclip") as info:
        Client(app_url, verbose=False).predict("", [handle_file(str(IMAGE))], None, None, None, api_name="/imagine")
    assert "Traceback" not in str(info.value)


def test_unclip_flag_reaches_the_pipeline(monkeypatch):
    monkeypatch.delenv("IBLLM_UNCLIP", raising=False)
    assert app.parse_args([]).unclip is None
    seen = {}
    monkeypatch.setattr(app.ImageBindLLMPipeline, "from_pretrained", lambda weights, **kw: seen.update(kw))
    app.load_pipeline(app.parse_args(["--weights", "tiny", "--unclip", "/data/unclip"]))
    assert seen["unclip_path"] == "/data/unclip"
    monkeypatch.setenv("IBLLM_UNCLIP", "/env/unclip")
    assert app.parse_args([]).unclip == "/env/unclip"


def test_image_settings_start_at_the_release_defaults(imagine_pipeline, tiny_pipeline):
    def controls(pipe):
        config = app.build_demo(pipe).get_config_file()["components"]
        return {c["props"].get("label"): (c["props"].get("value"), c["props"].get("interactive"), c["props"].get("maximum"))
                for c in config if c["props"].get("label") in ("Steps", "Guidance", "Noise level", "Seed (-1: random)",
                                                                "Size, width x height (auto: the model's own)")}
    on = controls(imagine_pipeline)
    assert [value for value, _, _ in on.values()] == [20, 10.0, 0, -1, "auto"]  # reference section 13: diffusers' defaults
    assert on["Noise level"][2] == imagine_pipeline.image_generator.max_noise_level
    assert all(interactive is not False for _, interactive, _ in on.values())
    assert all(interactive is False for _, interactive, _ in controls(tiny_pipeline).values())  # no model: shown, off
