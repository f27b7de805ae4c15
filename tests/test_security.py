"""What a stranger on the network cannot do: run code through a file, read server files, reach
a server that was not opened to them, or exhaust it with oversized uploads, prompts or answers."""

from __future__ import annotations

import ast
import math
import os
import uuid
from pathlib import Path

import gradio as gr
import httpx
import pytest

import app
import app_handlers
from demo.config import GenerationConfig
from demo.errors import InputError, PromptTooLongError

ROOT = Path(__file__).resolve().parents[1]
from scripts.local_app import LocalApp  # noqa: E402

FAST = {"max_new_tokens": 4, "temperature": 0.0}
IMAGE = ROOT / "examples" / "chelsea.png"


# --------------------------------------------------------------------------- deserialisation
# Calls that unpickle (run code from) their input. torch.load is allowed only with an explicit
# weights_only=True: its default changed in torch 2.6 and an environment variable can flip it.
UNPICKLING = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cPickle", "load"),
              ("dill", "load"), ("dill", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
              ("joblib", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle"), ("hub", "load"),
              ("jit", "load"), ("shelve", "open"), ("marshal", "loads"), ("marshal", "load")}


def unsafe_loads(path: Path, root: Path = ROOT) -> list[str]:
    """Unsafe deserialising calls in one source file, as 'file:line: reason'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
        call = (owner_name, node.func.attr)
        keywords = {k.arg: k.value for k in node.keywords}
        where = f"{path.relative_to(root)}:{node.lineno}"
        round_trip = (len(node.args) == 1 and isinstance(node.args[0], ast.Call) and isinstance(node.args[0].func, ast.Attribute)
                      and node.args[0].func.attr == "dumps")  # pickle.loads(pickle.dumps(x)): a copy, no foreign bytes
        if call in UNPICKLING and not round_trip:
            found.append(f"{where}: {owner_name}.{node.func.attr} unpickles")
        elif call == ("torch", "load"):
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{where}: torch.load without weights_only=True")
        elif call in {("np", "load"), ("numpy", "load")}:
            flag = keywords.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append(f"{where}: np.load with allow_pickle")
    return found


def test_no_source_file_unpickles_user_files_or_checkpoints():
    sources = [p for p in ROOT.rglob("*.py") if not {".venv", ".git", "node_modules"} & set(p.parts)]
    assert len(sources) > 40 and ROOT / "demo" / "pipeline.py" in sources
    assert not [hit for path in sources for hit in unsafe_loads(path)]


def test_the_unsafe_load_check_catches_what_it_should(tmp_path):
    (tmp_path / "bad.py").write_text(
        "import pickle, torch, numpy as np\n"
        "pickle.loads(b'')\n"
        "torch.load('x.pt')\n"
        "torch.load('x.pt', weights_only=False)\n"
        "np.load('x.npy', allow_pickle=True)\n"
        "pickle.loads(pickle.dumps(object()))\n"  # fine: a copy of the program's own object
        "torch.load('x.pt', map_location='cpu', weights_only=True)\n"  # fine
        "np.load('x.npy')\n")  # fine: allow_pickle defaults to False
    hits = unsafe_loads(tmp_path / "bad.py", root=tmp_path)
    assert [hit.split(": ", 1)[0] for hit in hits] == ["bad.py:2", "bad.py:3", "bad.py:4", "bad.py:5"]


# --------------------------------------------------------------------------- server files
def call_chat_raw(url: str, files: object) -> str:
    """POST /chat over plain HTTP, bypassing gradio_client (which would upload a local path
    itself); returns the event stream's text."""
    api = url + "gradio_api/call/chat"
    response = httpx.post(api, json={"data": ["What is this?", files, "text", None, [], FAST]}, timeout=10)
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    return httpx.get(f"{api}/{response.json()['event_id']}", timeout=30).text


def test_the_api_cannot_read_files_outside_the_upload_folder(app_url, tmp_path):
    from gradio.utils import get_upload_folder

    secret = tmp_path / f"secret-{uuid.uuid4().hex}.txt"  # in the system temp dir, outside uploads
    secret.write_text("the server's secret")
    paths = ["/etc/passwd", str(secret), str(ROOT / "README.md"), "README.md",
             f"{get_upload_folder()}/{os.path.relpath(secret, get_upload_folder())}",  # ../ out of uploads
             app_url + "gradio_api/info"]  # a URL on the server's own network: no fetching either
    for path in paths:
        events = call_chat_raw(app_url, [{"path": path, "meta": {"_type": "gradio.FileData"}}])
        assert "event: error" in events and "event: complete" not in events, path
        # A bare string instead of a file object is refused too.
        assert "event: complete" not in call_chat_raw(app_url, [path]), path
        assert httpx.get(app_url + "gradio_api/file=" + path).status_code in (403, 404), path
    assert not list(Path(get_upload_folder()).rglob(secret.name)), "the secret was copied into the upload folder"


def test_uploads_over_the_size_limit_are_refused(app_url, tmp_path):
    from gradio_client import Client, handle_file

    # The app_url server allows 20 MB. gradio_client checks the limit itself, before uploading...
    big = tmp_path / "big.png"
    big.write_bytes(IMAGE.read_bytes() + bytes(21 * 2**20))
    client = Client(app_url, verbose=False)
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict("q", [handle_file(str(big))], "image", None, [], FAST, api_name="/chat")
    # ... and the server refuses a client that does not.
    response = httpx.post(app_url + "gradio_api/upload", files={"files": ("big.png", big.read_bytes())}, timeout=60)
    assert response.status_code == 413
    assert isinstance(client.predict("q", [handle_file(str(IMAGE))], "image", None, [], FAST, api_name="/chat"), str)


# --------------------------------------------------------------------------- binding
def test_the_server_listens_on_loopback_only_unless_told_otherwise():
    with LocalApp() as server:
        addresses = {address for address, _ in server.listening()}
    assert addresses == {"127.0.0.1"}
    assert app.parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"  # the explicit way to open it


# --------------------------------------------------------------------------- prompt and answer limits
def test_prompt_length_is_limited_before_tokenising(tiny_pipeline, monkeypatch):
    limit = tiny_pipeline.limits.prompt_max_chars
    tokenizer = tiny_pipeline.model.tokenizer
    calls = []
    monkeypatch.setattr(tokenizer, "encode", lambda *a, **k: calls.append(1) or [])
    with pytest.raises(PromptTooLongError, match=f"over the limit of {limit}"):
        tiny_pipeline.prompt_ids("x" * (limit + 1))
    with pytest.raises(PromptTooLongError, match="question and input"):
        tiny_pipeline.prompt_ids("x" * (limit // 2), input_text="y" * (limit // 2 + 1))
    assert not calls, "the over-long prompt was tokenised"
    # A long conversation: turns beyond the character budget are dropped without tokenising them.
    history = [("q" * 500, "a" * 500)] * 1000
    _, dropped = tiny_pipeline.prompt_ids("question", history)
    assert dropped >= len(history) - limit // 1000 and len(calls) <= limit // 1000 + 1


def test_prompt_and_token_limits_reach_the_api(app_url, tiny_pipeline):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(app_url, verbose=False)
    with pytest.raises(AppError, match="characters"):
        client.predict("x" * (tiny_pipeline.limits.prompt_max_chars + 1), [], [], None, [], FAST, api_name="/chat")
    with pytest.raises(AppError, match="max_new_tokens"):
        client.predict("q", [], [], None, [], {"max_new_tokens": 100_000}, api_name="/chat")
    with pytest.raises(InputError):
        GenerationConfig(max_new_tokens=513).check()


@pytest.mark.parametrize("weights, history, settings, message", [
    ([math.nan], None, {}, "weight"),
    ([5.0], None, {}, "weight"),
    (["heavy"], None, {}, "weight"),
    (None, [["only a question"]], {}, "history"),
    (None, "not a list of turns", {}, "history"),
    (None, None, ["not", "a", "dict"], "settings"),
    (None, None, {"input": 42}, "input"),
])
def test_malformed_api_arguments_get_a_message(tiny_pipeline, weights, history, settings, message):
    with pytest.raises(gr.Error, match=message):
        list(app_handlers.api_chat(tiny_pipeline, "q", [str(IMAGE)], "image", weights, history, settings))
