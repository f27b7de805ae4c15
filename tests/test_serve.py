"""The OpenAI-compatible API (demo/serve), served by a real uvicorn on loopback and driven by the
official `openai` client (and httpx where the client hides what is tested)."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")  # pinned in requirements.txt

ROOT = Path(__file__).resolve().parents[1]
MODEL = "imagebind-llm-tiny"


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    yield from serve(tiny_pipeline)


@pytest.fixture(scope="module")
def picture_client(imagine_pipeline):
    """A client of a server whose pipeline has an image model (the tiny unCLIP)."""
    for url in serve(imagine_pipeline):
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)


def serve(pipe):
    import uvicorn

    from demo.serve import ServeOptions, create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = ServeOptions(model_name=MODEL, max_body_bytes=2 * 2**20)
    config = uvicorn.Config(create_app(pipe, options), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=60)


def png_data_url() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def wav_base64() -> str:
    import soundfile

    buffer = io.BytesIO()
    t = np.arange(16000) / 16000
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def multimodal_messages() -> list:
    return [{"role": "user", "content": [
        {"type": "text", "text": "What do you see and hear?"},
        {"type": "image_url", "image_url": {"url": png_data_url()}},
        {"type": "input_audio", "input_audio": {"data": wav_base64(), "format": "wav"}},
    ]}]


def test_models_lists_the_loaded_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_not_streamed_matches_the_pipeline(client, tiny_pipeline):
    from demo.config import GenerationConfig

    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello?"}],
                                           temperature=0, max_tokens=7)
    choice = reply.choices[0]
    expected = tiny_pipeline("Hello?", [], generation=GenerationConfig(temperature=0, max_new_tokens=7))
    assert choice.message.content == expected.text
    assert choice.finish_reason == ("length" if expected.finish_reason == "length" else "stop")
    ids, _ = tiny_pipeline.prompt_ids("Hello?", max_new_tokens=7)
    assert reply.usage.prompt_tokens == len(ids)
    assert 1 <= reply.usage.completion_tokens <= 7
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_streamed_with_image_and_audio(client, tiny_pipeline, tmp_path):
    from demo.config import GenerationConfig
    from demo.pipeline import InputItem

    messages = multimodal_messages()
    stream = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=9, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons in (["length"], ["stop"])
    assert chunks[-1].usage.completion_tokens >= 1
    # The same inputs through the library give the same greedy answer.
    image = tmp_path / "x.png"
    image.write_bytes(base64.b64decode(messages[0]["content"][1]["image_url"]["url"].split(",", 1)[1]))
    audio = tmp_path / "x.wav"
    audio.write_bytes(base64.b64decode(messages[0]["content"][2]["input_audio"]["data"]))
    expected = tiny_pipeline("What do you see and hear?", [InputItem("image", str(image)), InputItem("audio", str(audio))],
                             generation=GenerationConfig(temperature=0, max_new_tokens=9))
    assert text == expected.text


def test_weights_multi_turn_and_stop(client, tiny_pipeline):
    """imagebind.weights mixes the parts; earlier turns are history; `stop` cuts the answer."""
    messages = multimodal_messages() + [{"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Sure?"}]
    base = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12,
                                          extra_body={"imagebind": {"weights": [1.0, 0.0]}})
    text = base.choices[0].message.content
    assert text
    stop = text.strip()[1:3] if len(text.strip()) >= 3 else text.strip()
    cut = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12, stop=[stop],
                                         extra_body={"imagebind": {"weights": [1.0, 0.0]}})
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].message.content
    assert text.startswith(cut.choices[0].message.content)


def test_file_parts_modality_from_suffix_and_override(client):
    points = np.random.default_rng(1).standard_normal((500, 3)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, points)
    data = base64.b64encode(buffer.getvalue()).decode()
    part = {"type": "file", "file": {"file_data": data, "filename": "cloud.npy"}}
    with pytest.raises(openai.BadRequestError) as info:  # .npy fits point, depth, imu, embedding
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": "What?"}, part]}])
    assert "messages[0].content[1]" in info.value.message and "modality" in info.value.message
    reply = client.chat.completions.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What?"}, {**part, "modality": "point"}]}])
    assert reply.choices[0].message.content is not None


def test_bad_part_is_a_400_naming_it(client, server):
    broken = "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": png_data_url()}}]},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image_url", "image_url": {"url": broken}}]},
        ])
    error = info.value.body
    assert error["param"] == "messages[2].content[1]"
    assert "messages[2].content[1]" in error["message"] and "image" in error["message"]
    assert error["type"] == "invalid_request_error"
    response = httpx.post(f"{server}/chat/completions", json={"messages": [
        {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]})
    assert response.status_code == 400 and "remote URLs" in response.json()["error"]["message"]
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_fields_ignored_unknown_model_404_oversize_413(client, server):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                           presence_penalty=0.5, user="someone", extra_body={"not_a_field": 1})
    assert reply.choices[0].message.content is not None
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], temperature=1.5)
    assert info.value.body["param"] == "temperature"
    big = "data:image/png;base64," + base64.b64encode(b"\0" * (3 * 2**20)).decode()
    response = httpx.post(f"{server}/chat/completions", json={"messages": [
        {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": big}}]}]})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_queue_full_is_503(client, tiny_pipeline):
    engine = tiny_pipeline.engine
    engine.max_waiting, before = 0, engine.max_waiting
    try:
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert info.value.status_code == 503 and info.value.body["code"] == "server_busy"
    finally:
        engine.max_waiting = before


def test_embeddings_float_and_base64(client, tiny_pipeline):
    from demo.pipeline import InputItem

    image = {"type": "image_url", "image_url": {"url": png_data_url()}}
    floats = client.embeddings.create(model=MODEL, input=["a dog", image], encoding_format="float")
    packed = client.embeddings.create(model=MODEL, input=["a dog", image])  # the client asks for base64 and decodes it
    assert len(floats.data) == 2
    for a, b in zip(floats.data, packed.data):
        vector = np.asarray(a.embedding)
        assert vector.shape == (tiny_pipeline.embed_dim,)
        assert abs(np.linalg.norm(vector) - 1) < 1e-5
        assert np.allclose(vector, b.embedding)
    expected = tiny_pipeline.embed(InputItem("text", _text_path("a dog")))
    assert np.allclose(floats.data[0].embedding, expected.numpy(), atol=1e-6)


def _text_path(text: str) -> str:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "t.txt"
    path.write_text(text)
    return str(path)


def test_two_streams_at_once_complete(client):
    def run(seed: int) -> tuple[str, str]:
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Story {seed}"}],
                                                max_tokens=20, seed=seed, temperature=0.8, stream=True)
        chunks = list(stream)
        return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, [1, 2]))
    assert all(reason in ("stop", "length") for _, reason in results)
    # The same seed alone gives the same text as in the shared batch.
    assert run(1) == results[0]


def test_disconnect_cancels_the_request(server, tiny_pipeline):
    engine = tiny_pipeline.engine
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Talk"}], "max_tokens": 512, "stream": True,
            "temperature": 1.0, "seed": 3}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{server}/chat/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            assert engine.running == 1
    deadline = time.time() + 5
    while engine.running and time.time() < deadline:
        time.sleep(0.02)
    assert engine.running == 0  # the row was freed long before 512 tokens


def test_temp_files_are_deleted(client):
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("ibllm-serve-*"))
    client.chat.completions.create(model=MODEL, messages=multimodal_messages(), max_tokens=2)
    assert set(Path(tempfile.gettempdir()).glob("ibllm-serve-*")) == before


def test_command_help():
    result = subprocess.run([sys.executable, "-m", "demo.serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0
    assert "--weights" in result.stdout and "/v1" in result.stdout and "--allow-local-files" in result.stdout
    assert "--unclip" in result.stdout and "images/generations" in result.stdout


def test_disconnect_while_waiting_for_a_whole_answer_cancels(server, tiny_pipeline):
    engine = tiny_pipeline.engine
    steps = engine.steps
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Talk"}], "max_tokens": 512, "temperature": 1.0, "seed": 4}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
    deadline = time.time() + 5
    while engine.running and time.time() < deadline:
        time.sleep(0.02)
    assert engine.running == 0
    assert engine.steps - steps < 500  # stopped well before max_tokens


def test_mounts_into_the_gradio_app(tiny_pipeline):
    """What app.py does to serve the API on the UI's port: mount into `demo.app` after launch."""
    import app
    from demo.serve import mount_openai

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = app.build_demo(tiny_pipeline)
    demo.queue(max_size=16)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_style())
    try:
        mount_openai(demo.app, tiny_pipeline)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="imagebind-llm", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert reply.choices[0].message.content is not None
        with pytest.raises(openai.InternalServerError) as info:  # the image route is there; this pipeline has no image model
            client.images.generate(prompt="a cat", extra_body={"imagebind": {"inputs": [image_part()]}})
        assert info.value.status_code == 503 and "ibllm download unclip" in info.value.body["message"]
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200
    finally:
        demo.close()


def test_inputs_of_an_earlier_turn_without_text_count(client, server):
    """A first user message with only an image, answered, then a text question: the image is an
    input of the request (all user messages' inputs count), and its empty text is no error."""
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url()}}]},
                {"role": "assistant", "content": "Got it."}, {"role": "user", "content": "What is it?"}]
    with_image = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=6)
    broken = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}, *messages[1:]]
    response = httpx.post(f"{server}/chat/completions", json={"messages": broken, "max_tokens": 6}, timeout=60)
    assert with_image.choices[0].message.content is not None
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages[0].content[0]"


# ----------------------------------------------------------------------------------------------
# POST /v1/images/generations
# ----------------------------------------------------------------------------------------------
def image_part() -> dict:
    return {"type": "image_url", "image_url": {"url": png_data_url()}}


def picture(client, prompt="a watercolour", size="48x32", **imagebind):
    """images.generate with the inputs and settings in the `imagebind` extra field."""
    extra = {"inputs": [image_part(), {"type": "input_audio", "input_audio": {"data": wav_base64(), "format": "wav"}}],
             "weights": [1.0, 0.5], "steps": 2, **imagebind}
    return client.images.generate(model=MODEL, prompt=prompt, size=size, response_format="b64_json",
                                  extra_body={"imagebind": extra})


def test_images_generate_returns_a_png_of_the_asked_size_and_its_record(picture_client):
    from PIL import Image

    reply = picture(picture_client, seed=5, negative_prompt="blurry")
    assert len(reply.data) == 1
    image = Image.open(io.BytesIO(base64.b64decode(reply.data[0].b64_json)))
    assert image.format == "PNG" and image.size == (48, 32)  # size is WIDTHxHEIGHT
    record = reply.model_extra["imagebind"]
    assert (record["seed"], record["steps"], record["prompt"], record["negative_prompt"]) == (5, 2, "a watercolour", "blurry")
    assert [(m["modality"], m["share"]) for m in record["mix"]] == [("image", 0.6667), ("audio", 0.3333)]
    assert reply.size == "48x32" and reply.output_format == "png"
    again = picture(picture_client, seed=5, negative_prompt="blurry")
    assert again.data[0].b64_json == reply.data[0].b64_json  # same seed, same picture
    drawn = picture(picture_client)  # no seed: a new one, returned so the picture can be made again
    seed = drawn.model_extra["imagebind"]["seed"]
    assert 0 <= seed < 2**32 and picture(picture_client, seed=seed).data[0].b64_json == drawn.data[0].b64_json


@pytest.mark.parametrize("change, param", [
    ({"n": 2}, "n"),
    ({"size": "48by32"}, "size"),
    ({"size": "36x32"}, "size"),  # not a multiple of 8
    ({"response_format": "url"}, "response_format"),
    ({"imagebind": {"inputs": []}}, "imagebind.inputs"),
    ({"imagebind": {"inputs": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}},
     "imagebind.inputs[0]"),
    ({"imagebind": {"inputs": [{"type": "text", "text": "hi"}]}}, "imagebind.inputs[0]"),
    ({"imagebind": {"inputs": [{"type": "image_url", "image_url": {"url": "x"}}], "stpes": 2}}, "imagebind.stpes"),
    ({"imagebind": {"inputs": [{"type": "image_url", "image_url": {"url": "x"}}], "steps": 0}}, "imagebind.steps"),
    ({"imagebind": {"inputs": [{"type": "image_url", "image_url": {"url": "x"}}], "weights": [1, 2]}}, "imagebind.weights"),
])
def test_bad_image_requests_are_400_naming_the_field(picture_client, change, param):
    body = {"model": MODEL, "prompt": "a cat", "size": "48x32",
            "imagebind": {"inputs": [image_part()], "steps": 2}, **change}
    response = httpx.post(f"{picture_client.base_url}images/generations", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_images_oversize_413_and_without_an_image_model_503_not_retried(picture_client, server):
    big = "data:image/png;base64," + base64.b64encode(b"\0" * (3 * 2**20)).decode()
    response = httpx.post(f"{picture_client.base_url}images/generations", timeout=60, json={
        "prompt": "x", "imagebind": {"inputs": [{"type": "image_url", "image_url": {"url": big}}]}})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=2, timeout=60)
    started = time.time()
    with pytest.raises(openai.InternalServerError) as info:
        client.images.generate(prompt="a cat", extra_body={"imagebind": {"inputs": [image_part()]}})
    assert info.value.status_code == 503 and info.value.body["code"] == "image_model_missing"
    assert "ibllm download unclip" in info.value.body["message"]
    assert info.value.response.headers["x-should-retry"] == "false" and time.time() - started < 5  # no retries


def test_images_busy_is_503(imagine_pipeline):
    from fastapi.testclient import TestClient

    from demo.serve import ServeOptions, create_app

    with TestClient(create_app(imagine_pipeline, ServeOptions(max_pending_pictures=0))) as local:
        response = local.post("/v1/images/generations", json={"prompt": "", "imagebind": {"inputs": [image_part()]}})
    assert response.status_code == 503 and response.json()["error"]["code"] == "server_busy"
