"""MCP tools: the library functions (demo/serve/tools.py) directly, then `python app.py --mcp` as served
(build_demo(mcp=True) + launch(mcp_server=True)) driven by the official `mcp` client over streamable HTTP."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import math
import socket

import faiss
import numpy as np
import pytest
import torch
from PIL import Image

from demo.arithmetic import mix_embeddings as release_mix
from demo.cache import VisualCache
from demo.errors import InputError
from demo.serve import tools

TOOLS = {"describe_inputs", "embed_file", "mix_embeddings", "search_visual_cache"}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mcp") / "red.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    return path


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def cached_pipeline(tiny_pipeline, image_file):
    """The tiny pipeline with a 3-entry cache whose entry 1 is the test image's own embedding."""
    from demo.pipeline import InputItem

    dim = tiny_pipeline.embed_dim
    own = tiny_pipeline.embed(InputItem("image", str(image_file))).numpy()  # (D,) unit
    others = np.random.default_rng(0).standard_normal((2, dim)).astype(np.float32)
    vectors = np.stack([others[0], own, others[1]])  # (3, D)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    pipe = copy.copy(tiny_pipeline)  # shares model and engine; only the cache differs
    pipe.cache = VisualCache(index, sources=["a.jpg", "red.png", "c.jpg"], dim=dim)
    return pipe


# ------------------------------------------------------------------ library
def test_embed_file_is_the_unit_embedding_with_its_modality(tiny_pipeline, image_file):
    out = tools.embed_file(tiny_pipeline, str(image_file))
    assert out["modality"] == "image" and out["dim"] == tiny_pipeline.embed_dim == len(out["embedding"])
    assert math.isclose(math.hypot(*out["embedding"]), 1.0, rel_tol=1e-4)
    assert tools.embed_file(tiny_pipeline, str(image_file), "thermal")["modality"] == "thermal"


def test_embed_file_refuses_a_modality_the_suffix_cannot_be(tiny_pipeline, image_file):
    with pytest.raises(InputError, match="cannot be read as audio"):
        tools.embed_file(tiny_pipeline, str(image_file), "audio")


def test_mix_follows_the_release_rule():
    a, b = [3.0, 0.0, 0.0], [0.0, 2.0, 0.0]
    mixed = tools.mix_embeddings([a, b], [1.0, 3.0])
    expected = release_mix([torch.tensor(a), torch.tensor(b)], [1.0, 3.0])
    assert torch.allclose(torch.tensor(mixed), expected) and math.isclose(mixed[1], 3 / (4 + 1e-6), rel_tol=1e-5)


@pytest.mark.parametrize("embeddings, weights, message", [
    ([[1.0, 0.0], [1.0, 0.0, 0.0]], [1, 1], "embedding 2 has 3 values"),
    ([[1.0, float("nan")]], [1], "finite numbers"),
    ([[1.0, 0.0], [1.0, 0.0]], [1], "one weight per embedding"),
    ([[1.0, 0.0], [1.0, 0.0]], [1, -1], "cancel out"),
    ([], [], "at least one embedding"),
])
def test_mix_errors_say_what_is_wrong(embeddings, weights, message):
    with pytest.raises(InputError, match=message):
        tools.mix_embeddings(embeddings, weights)


def test_describe_inputs_answers_about_the_files(tiny_pipeline, image_file):
    assert isinstance(tools.describe_inputs(tiny_pipeline, "What is this?", [str(image_file)], [0.5]), str)
    with pytest.raises(InputError, match="one modality and one weight per file"):
        tools.describe_inputs(tiny_pipeline, "What is this?", [str(image_file)], [1.0, 1.0])
    with pytest.raises(InputError, match=r"outside \[-1, 1\]"):
        tools.describe_inputs(tiny_pipeline, "What is this?", [str(image_file)], [3.0])
    with pytest.raises(InputError, match="the question is empty"):
        tools.describe_inputs(tiny_pipeline, " ", [str(image_file)])


def test_search_finds_the_file_itself_first(cached_pipeline, image_file):
    by_file = tools.search_visual_cache(cached_pipeline, str(image_file), k=2)
    assert by_file["ids"][0] == 1 and by_file["sources"][0] == "red.png" and len(by_file["ids"]) == 2
    assert math.isclose(by_file["similarities"][0], 1.0, rel_tol=1e-4)
    vector = tools.embed_file(cached_pipeline, str(image_file))["embedding"]
    by_vector = tools.search_visual_cache(cached_pipeline, embedding=[2 * v for v in vector], k=10)  # k > entries
    assert by_vector["ids"][0] == 1 and len(by_vector["ids"]) == 3


def test_search_errors(tiny_pipeline, cached_pipeline, image_file):
    with pytest.raises(InputError, match="no visual cache is loaded"):
        tools.search_visual_cache(tiny_pipeline, str(image_file))
    with pytest.raises(InputError, match="either a file or an embedding"):
        tools.search_visual_cache(cached_pipeline)
    with pytest.raises(InputError, match="this model's embeddings have"):
        tools.search_visual_cache(cached_pipeline, embedding=[1.0, 0.0])


# ------------------------------------------------------------------ the served app, through an MCP client
@pytest.fixture(scope="module")
def mcp_url(tiny_pipeline):
    import app

    args = app.parse_args(["--mcp", "--weights", "tiny"])
    assert args.mcp
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = app.build_demo(tiny_pipeline, mcp=args.mcp)
    demo.queue(max_size=16)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                mcp_server=args.mcp)
    yield f"http://127.0.0.1:{port}/gradio_api/mcp/"
    demo.close()


def over_mcp(url: str, calls: list[tuple[str, dict]]):
    """(tools listed, [CallToolResult per call]) from one MCP session."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def session_run():
        async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as session:
            await session.initialize()
            listed = (await session.list_tools()).tools
            return listed, [await session.call_tool(name, arguments) for name, arguments in calls]

    return asyncio.run(session_run())


def text(result) -> str:
    return "".join(part.text for part in result.content if part.type == "text")


def test_mcp_tools_are_typed_documented_and_callable(mcp_url, tiny_pipeline, image_file):
    image = data_url(image_file)
    listed, (embedded, mixed, described, no_cache, bad) = over_mcp(mcp_url, [
        ("embed_file", {"file": image}),
        ("mix_embeddings", {"embeddings": [[1.0, 0.0], [0.0, 1.0]], "weights": [1.0, 1.0]}),
        ("describe_inputs", {"question": "What is this?", "files": [image, image], "weights": [1.0, -0.5]}),
        ("search_visual_cache", {"file": image}),
        ("embed_file", {"file": image, "modality": "audio"}),
    ])
    tools_by_name = {tool.name: tool for tool in listed}
    assert TOOLS <= set(tools_by_name)
    embed_schema = tools_by_name["embed_file"].inputSchema
    assert embed_schema["required"] == ["file"] and "description" in embed_schema["properties"]["modality"]
    assert "Gradio File Input" in embed_schema["properties"]["file"]["format"]  # URL or base64, handled by Gradio
    mix_props = tools_by_name["mix_embeddings"].inputSchema["properties"]
    assert mix_props["weights"]["items"] == {"type": "number"} and mix_props["weights"]["description"]
    assert tools_by_name["search_visual_cache"].inputSchema["properties"]["k"]["default"] == 5
    assert all(tools_by_name[name].description for name in TOOLS)

    assert not embedded.isError
    out = json.loads(text(embedded))
    assert out["modality"] == "image" and len(out["embedding"]) == tiny_pipeline.embed_dim
    assert math.isclose(math.hypot(*out["embedding"]), 1.0, rel_tol=1e-4)
    assert not mixed.isError and np.allclose(json.loads(text(mixed)), [0.5, 0.5], atol=1e-5)
    assert not described.isError and text(described)  # a list of base64 files: Gradio leaves these to us
    assert no_cache.isError and "no visual cache is loaded" in text(no_cache)
    assert bad.isError and "cannot be read as audio" in text(bad) and "/tmp" not in text(bad)


def test_server_files_cannot_be_named_by_path(mcp_url, image_file):
    """A client may not make the tools read a server file: Gradio refuses a FileData path it did not
    receive as an upload, and the list items we fetch ourselves must be URLs or base64."""
    import httpx

    base = mcp_url.removesuffix("mcp/")  # .../gradio_api/
    server_file = {"path": str(image_file), "meta": {"_type": "gradio.FileData"}}
    for endpoint, data in (("embed_file", [server_file, None]), ("describe_inputs", ["q", [server_file], None]),
                           ("describe_inputs", ["q", [str(image_file)], None])):
        event = httpx.post(f"{base}call/{endpoint}", json={"data": data}).json()["event_id"]
        reply = httpx.get(f"{base}call/{endpoint}/{event}", timeout=30).text
        assert reply.startswith("event: error") and "embedding" not in reply, (endpoint, data, reply)
