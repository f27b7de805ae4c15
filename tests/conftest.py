"""Shared fixtures: tiny random checkpoints in the released formats, built once per test run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory):
    """Official-format tiny files (Meta base, delta, 7B.pth, tokenizer.model), no encoder."""
    from demo.tiny import write_tiny_release

    return write_tiny_release(tmp_path_factory.mktemp("tiny_release"), seed=0, with_encoder=False)


@pytest.fixture(scope="session")
def tiny_converted(tiny_release, tmp_path_factory):
    """The tiny release converted in fp32 (for exact comparisons)."""
    from demo.convert import convert

    out = tmp_path_factory.mktemp("tiny_converted")
    return convert(
        tiny_release.llama_dir, tiny_release.adapter, out, delta=tiny_release.delta_dir, dtype=torch.float32, progress=False, placeholder=True
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_converted):
    from demo.model import ImageBindLLM

    return ImageBindLLM.from_pretrained(tiny_converted, device="cpu")


# ---------------------------------------------------------------------------------------------
# Web app fixtures (tests/test_app.py, tests/test_browser.py), added by the app engineer.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_pipeline():
    """The real offline `tiny` pipeline, as `python app.py` runs it with no weights."""
    from demo.pipeline import ImageBindLLMPipeline

    return ImageBindLLMPipeline.from_pretrained("tiny")


@pytest.fixture(scope="session")
def app_url(tiny_pipeline):
    """The web app served on 127.0.0.1 (a free port) for gradio_client and browser tests."""
    yield from _serve_app(tiny_pipeline)


def _serve_app(pipe):
    import socket

    import app

    with socket.socket() as probe:  # a free port; the tiny race window is fine for tests
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = app.build_demo(pipe)
    demo.queue(max_size=16)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                max_file_size="20mb", **app.launch_style())
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="session")
def tiny_unclip(tmp_path_factory):
    """A tiny random Stable unCLIP folder (tests/tiny_unclip.py) of the tiny encoder's width."""
    from demo.encoders.encoder import EncoderConfig
    from tiny_unclip import write_tiny_unclip

    return write_tiny_unclip(tmp_path_factory.mktemp("tiny_unclip"), embed_dim=EncoderConfig.preset("tiny").out_dim)


@pytest.fixture(scope="session")
def imagine_pipeline(tiny_pipeline, tiny_unclip):
    """The tiny pipeline with an image model (as `python app.py --unclip PATH`): the same LLM,
    encoder and engine, plus the tiny unCLIP (from_pretrained(unclip_path=) is tested in test_imagine)."""
    from demo.imagine import UnCLIPGenerator
    from demo.pipeline import ImageBindLLMPipeline

    p = tiny_pipeline
    return ImageBindLLMPipeline(p.model, p.encoder, p.cache, limits=p.limits, placeholder=p.is_placeholder,
                                notice=p.notice, engine=p.engine,
                                image_generator=UnCLIPGenerator.from_pretrained(tiny_unclip, device="cpu"))


@pytest.fixture(scope="session")
def imagine_url(imagine_pipeline):
    """The web app with an image model, served like `app_url`."""
    yield from _serve_app(imagine_pipeline)
