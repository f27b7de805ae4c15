"""MCP tools of the web app (`python app.py --mcp`): typed, documented wrappers that Gradio turns
into MCP tool schemas (names, parameter descriptions from the docstrings; FileData parameters
accept a URL or base64 from MCP clients). The work is done by demo/serve/tools.py."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr
from gradio import processing_utils
from gradio.data_classes import FileData
from gradio.utils import get_upload_folder

from demo.chat_request import MAX_INPUTS, plain_message
from demo.errors import DemoError
from demo.modalities import documented
from demo.serve import tools

DEFAULT_TEMP_DIR = get_upload_folder()  # where Gradio keeps uploads (GRADIO_TEMP_DIR)


def _path(file: FileData | dict | str) -> str:
    """The server copy of a file. Gradio turns a top-level FileData parameter's URL or base64 into an
    uploaded file, but leaves the items of a list[FileData] as the client's strings: fetch those the
    way Gradio would (base64 saved to its cache, a URL downloaded with its SSRF guard)."""
    if isinstance(file, str):
        if file.startswith("data:"):
            return processing_utils.save_base64_to_cache(file, DEFAULT_TEMP_DIR)
        if file.startswith(("http://", "https://")):
            return processing_utils.ssrf_protected_download(file, DEFAULT_TEMP_DIR)
        raise gr.Error("a file must be an http(s) URL or base64 data (data:<mime>;base64,...)")
    return file["path"] if isinstance(file, dict) else file.path


def _run(work, *args) -> Any:
    """A library error becomes a tool error with its message (server paths cut to file names)."""
    try:
        return work(*args)
    except DemoError as exc:
        raise gr.Error(plain_message(exc)) from None


def register_mcp_tools(pipe) -> None:
    """Registers the tools as API endpoints (inside a Blocks context); `launch(mcp_server=True)` serves them."""

    @documented
    def describe_inputs(question: str, files: list[FileData], weights: list[float] | None = None) -> str:
        """Ask ImageBind-LLM a question about files of any modality ({modalities}); the modality of each file
        comes from its suffix.

        Args:
            question: the question or instruction, e.g. "What is in this picture?"
            files: the files to answer about (URLs or base64); [] for a text-only answer
            weights: one mixing weight per file in [-1, 1] (a negative weight steers away); default all 1
        Returns:
            the model's answer
        """
        if len(files or []) > MAX_INPUTS:  # before fetching any of them
            raise gr.Error(f"at most {MAX_INPUTS} files per request, got {len(files)}")
        return _run(tools.describe_inputs, pipe, question, [_path(f) for f in files or []], weights)

    @documented
    def embed_file(file: FileData, modality: str | None = None) -> str:
        """The ImageBind embedding of one file, L2-normalised, in the joint space shared by all modalities.

        Args:
            file: the file to embed (URL or base64)
            modality: {modalities}; default: from the suffix
        Returns:
            JSON {"modality": str, "dim": int, "embedding": list of floats (unit norm)}
        """
        return json.dumps(_run(tools.embed_file, pipe, _path(file), modality))

    def mix_embeddings(embeddings: list[list[float]], weights: list[float]) -> list[float]:
        """Mix embeddings as ImageBind-LLM does: each normalised, weights divided by the sum of their absolute
        values, the weighted sum not re-normalised.

        Args:
            embeddings: the embeddings to mix (e.g. from embed_file), all of one length
            weights: one weight per embedding (a negative weight steers away)
        Returns:
            the mixed vector
        """
        return _run(tools.mix_embeddings, embeddings, weights)

    def search_visual_cache(file: FileData | None = None, embedding: list[float] | None = None, k: int = 5) -> str:
        """The visual cache entries nearest to a file or an embedding (cosine similarity), best first; an error when
        the server has no cache loaded.

        Args:
            file: a file to search with (URL or base64); give this or embedding
            embedding: an embedding to search with (e.g. from embed_file or mix_embeddings)
            k: how many neighbours to return
        Returns:
            JSON {"ids": list of int, "similarities": list of float, "sources": list of the entries' recorded sources}
        """
        return json.dumps(_run(tools.search_visual_cache, pipe, _path(file) if file else None, embedding, k))

    for fn in (describe_inputs, embed_file, mix_embeddings, search_visual_cache):
        gr.api(fn, api_name=fn.__name__, concurrency_limit=None)  # the engine batches and bounds the work
