"""demo.chat_request: the checked chat request every front end shares, and its helpers."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from demo.chat_request import (SETTINGS_KEYS, ChatRequest, encode_dropping_bad_inputs, infer_modality,
                               plain_message, safe_name, write_text_input)
from demo.errors import InputError
from demo.inputs.limits import InputLimits
from demo.pipeline import InputItem

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
IMAGE = str(EXAMPLES / "chelsea.png")


@pytest.mark.parametrize("kwargs, message", [
    # the 9 arguments that gave "Unexpected server error" before (issue 12)
    ({"settings": {"temperature": 1e-45}}, "too small to sample"),
    ({"settings": {"cache": {"k": math.inf}}}, "settings.cache.k"),
    ({"settings": {"cache": {"k": -math.inf}}}, "settings.cache.k"),
    ({"settings": {"cache": {"k": math.nan}}}, "settings.cache.k"),
    ({"settings": {"cache": {"k": "x"}}}, "settings.cache.k"),
    ({"settings": {"cache": {"k": 2.5}}}, "whole number"),
    ({"weights": 0.5}, "weights must be a list"),
    ({"weights": 1}, "weights must be a list"),
    ({"settings": {"cache": "on"}}, "settings.cache must be a JSON object"),
    # and the rest of the shapes
    ({"settings": {"temprature": 0.5}}, "unknown settings key 'temprature'; known: max_new_tokens"),
    ({"settings": {"cache": {"kk": 3}}}, "unknown settings.cache key 'kk'"),
    ({"settings": {"max_new_tokens": 1.5}}, "whole number"),
    ({"settings": {"top_p": True}}, "settings.top_p"),
    ({"weights": [math.nan]}, "weight"),
    ({"weights": [5.0]}, "outside"),
    ({"modalities": "photo"}, "unknown modality 'photo'"),
    ({"modalities": ["audio"]}, "cannot be read as audio"),
    ({"history": [["only a question"]]}, "history"),
    ({"files": "a.png"}, "files must be a list"),
])
def test_malformed_arguments_get_a_message_naming_them(kwargs, message):
    args = {"files": [IMAGE], "modalities": None, "weights": None, "history": None, "settings": None, **kwargs}
    with pytest.raises(InputError, match=message):
        ChatRequest.parse("q", args["files"], args["modalities"], args["weights"], args["history"], args["settings"])


def test_a_good_request_is_typed():
    request = ChatRequest.parse("  What is it? ", [IMAGE, str(EXAMPLES / "speech.wav")], None, [1, -0.5],
                                [["q0", "a0"]], {"temperature": 0, "max_new_tokens": 8, "input": "ctx"})
    assert request.question == "What is it?" and request.history == [("q0", "a0")] and request.input_text == "ctx"
    assert [(i.modality, i.weight, i.name) for i in request.inputs] == [("image", 1.0, "chelsea.png"),
                                                                          ("audio", -0.5, "speech.wav")]
    assert (request.generation.temperature, request.generation.max_new_tokens) == (0.0, 8)
    assert "cache" in SETTINGS_KEYS and request.cache is None


def test_the_question_length_is_enforced_before_anything_else():
    limits = InputLimits(prompt_max_chars=100)
    with pytest.raises(InputError, match="over the limit of 100"):
        ChatRequest.parse("x" * 101, limits=limits)
    with pytest.raises(InputError, match="question is empty"):
        ChatRequest.parse("   ")


def test_modality_from_the_file_type_with_an_override():
    assert infer_modality("a/cat.PNG") == "image" and infer_modality("cloud.npy") == "point"
    assert infer_modality("d.png", "depth") == "depth" and infer_modality("x.wav", "auto") == "audio"
    with pytest.raises(InputError, match="unsupported file type"):
        infer_modality("notes.docx")


def test_messages_never_show_server_paths_or_direction_controls(tmp_path):
    hostile = tmp_path / "uploads" / "abc123" / "cat\u202egnp.exe.png"
    error = InputError(f"{str(hostile)!r}: cannot identify image file")  # escaped: plain replace misses it
    message = plain_message(error)
    assert str(tmp_path) not in message and "uploads" not in message and "\u202e" not in message
    assert "gnp.exe.png" in message  # the file name stays (escaped by repr, so visibly)
    assert safe_name(str(hostile)) == "catgnp.exe.png"
    item = InputItem("image", str(hostile), name=safe_name(str(hostile)))
    assert plain_message(InputError(f"{hostile}: bad"), [item]) == "catgnp.exe.png: bad"


def test_typed_text_goes_to_a_fresh_file_that_never_follows_a_symlink(tmp_path):
    first, second = (write_text_input("a red bicycle", InputLimits(), tmp_path) for _ in range(2))
    assert first != second and first.read_text() == "a red bicycle"
    assert oct(first.stat().st_mode & 0o777) == "0o600"  # mkstemp: only the server's user reads it
    victim = tmp_path / "victim"
    victim.write_text("keep")
    for n in range(50):  # a symlink planted at any predictable name would not be written through
        os.symlink(victim, tmp_path / f"text-{n}.txt")
    write_text_input("attack", InputLimits(), tmp_path)
    assert victim.read_text() == "keep"
    with pytest.raises(InputError, match="over the limit"):
        write_text_input("x" * 100, InputLimits(text_max_bytes=10), tmp_path)


def test_a_broken_input_is_dropped_and_the_rest_encoded(tiny_pipeline, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    items = [InputItem("image", IMAGE), InputItem("image", str(broken))]
    cond, kept, messages = encode_dropping_bad_inputs(tiny_pipeline, items)
    assert cond is not None and [i.display_name for i in kept] == ["chelsea.png"]
    assert len(messages) == 1 and "broken.png" in messages[0] and str(tmp_path) not in messages[0]
    # An error no single input explains keeps the mix and returns the library's message.
    cancelling = [InputItem("image", IMAGE, 0.5), InputItem("image", IMAGE, -0.5)]
    try:
        tiny_pipeline.encode(cancelling)
    except InputError:
        cond, kept, messages = encode_dropping_bad_inputs(tiny_pipeline, cancelling)
        assert cond is None and kept == cancelling and messages


def test_numbers_from_numpy_are_accepted():
    request = ChatRequest.parse("q", [IMAGE], "image", [np.float32(0.5)], None, {"top_p": np.float64(0.5)})
    assert request.inputs[0].weight == 0.5 and request.generation.top_p == 0.5
