"""Tests for demo.modalities: everything that lists or checks modalities is read from the one table.

A fake modality registered at run time (one row, one loader function) must show up in the loader
registry, the encoder's checks and tower choice, suffix inference, icons and the API docs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from demo.encoders.encoder import EncoderConfig, MultimodalEncoder
from demo.preprocess import RELEASE, PreprocessConfig
from demo.errors import InputError, WeightsError
from demo.inputs import LOADERS, InputLimits, load_input
from demo.modalities import (DOC_BEGIN, DOC_END, ICONS, MODALITIES, Modality, SampleShape, api_reference, documented,
                             names_in_words, register_modality, unregister_modality, write_reference)

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def load_sonar(source, limits, cancel=None) -> torch.Tensor:
    """A new modality's whole loader: a .sonar file of float32 values -> [3, 1, 128, 204] (audio's layout)."""
    values = np.fromfile(source, dtype=np.float32)
    if values.size != 3 * 128 * 204:
        raise InputError(f"{Path(source).name}: expected {3 * 128 * 204} values, got {values.size}")
    return torch.from_numpy(values).reshape(3, 1, 128, 204)


SONAR = Modality("sonar", "Sonar", "🦇", "audio", (".sonar",),
                 SampleShape(("audio_clips", 1, "audio_num_mel_bins", "audio_target_len"), any_first=True),
                 load_sonar, "a sonar echo as a spectrogram", limits_key="audio")


@pytest.fixture
def sonar():
    register_modality(SONAR)
    yield SONAR
    unregister_modality("sonar")


@pytest.fixture(scope="module")
def encoder():
    return MultimodalEncoder.from_config("tiny", device="cpu")


def test_a_registered_row_shows_up_everywhere(sonar, encoder, tmp_path):
    from demo.chat_request import infer_modality
    from demo.serve.content import infer_modality as api_infer_modality

    path = tmp_path / "echo.sonar"
    np.random.default_rng(0).standard_normal(3 * 128 * 204).astype(np.float32).tofile(path)
    assert LOADERS["sonar"] is load_sonar and "sonar" in LOADERS
    assert load_input("sonar", path).shape == (3, 1, 128, 204)
    assert ICONS["sonar"] == "🦇"
    assert infer_modality("echo.sonar") == "sonar" and api_infer_modality("echo.sonar", "x") == "sonar"
    assert "sonar" in names_in_words() and "`sonar` (.sonar): a sonar echo" in api_reference()
    assert sonar.max_bytes(InputLimits(audio_max_bytes=123)) == 123
    # The encoder picks the row's tower and checks the row's layout.
    assert "sonar" in encoder.modalities
    embedding = encoder.encode("sonar", load_input("sonar", path))
    assert embedding.shape == (1024,) and torch.isfinite(embedding).all()
    with pytest.raises(InputError, match=r"sonar sample has shape \[3, 1, 128, 200\]; expected \[any, 1, 128, 204\]"):
        encoder.encode("sonar", torch.zeros(3, 1, 128, 200))


def test_a_row_with_a_preview_gets_one_in_a_session_mix(tmp_path):
    from dataclasses import replace

    from demo.chat_session import new_input

    made = []

    def preview(source, limits, directory=None):
        made.append(Path(directory) / "echo.png")
        made[-1].write_bytes(b"png")
        return made[-1]

    path = tmp_path / "echo.sonar"
    path.write_bytes(b"")
    register_modality(replace(SONAR, preview=f"{__name__}:preview_for_test"))
    globals()["preview_for_test"] = preview
    try:
        entry = new_input(path, work_dir=tmp_path)
        assert entry.modality == "sonar" and entry.preview == str(made[0]) and entry.owned == [str(made[0])]
    finally:
        unregister_modality("sonar")
        del globals()["preview_for_test"]
    assert new_input(path.with_suffix(".wav")).preview is None  # audio: the browser plays it itself


def test_documented_fills_the_names_from_the_table(sonar):
    @documented
    def tool():
        """Takes {modalities}."""

    assert tool.__doc__ == f"Takes {names_in_words()}." and tool.__doc__.endswith("embedding or sonar.")


def test_a_row_for_a_missing_tower_names_it(encoder):
    register_modality(Modality("radar", "Radar", "📡", "radar", (".radar",), SampleShape((4,)), load_sonar, "radar"))
    try:
        assert "radar" not in encoder.modalities
        with pytest.raises(WeightsError, match="'radar' tower"):
            encoder.encode("radar", torch.zeros(4))
    finally:
        unregister_modality("radar")


def test_every_row_is_complete():
    for name, row in MODALITIES.items():
        assert row.name == name and row.icon and row.api and row.capture
        assert callable(row.load_function()) and (not row.preview or callable(row.preview_function()))
        assert all(isinstance(n, int) and n > 0 for n in row.shape.resolve())
        assert row.max_bytes(InputLimits()) > 0  # its limits key names a real InputLimits field
    with pytest.raises(ValueError, match="unknown capture kinds"):
        Modality("x", "X", "x", "", (".x",), SampleShape((1,)), load_sonar, "x", capture=("telepathy",))


def test_the_api_doc_block_is_the_table():
    text = API_DOC.read_text()
    block = text.split(DOC_BEGIN)[1].split(DOC_END)[0].strip()
    assert block == api_reference(), "docs/api.md is out of date: run demo.modalities.write_reference('docs/api.md')"


def test_write_reference_rewrites_only_the_block(tmp_path, sonar):
    doc = tmp_path / "api.md"
    doc.write_text(f"before\n{DOC_BEGIN}\nold\n{DOC_END}\nafter\n")
    assert write_reference(doc) and not write_reference(doc)
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "- `sonar`" in text and "old" not in text


def test_preprocessing_travels_with_the_encoder_config():
    config = EncoderConfig.preset("tiny")
    assert config.preprocess == RELEASE
    saved = config.to_dict()
    assert EncoderConfig.from_dict(saved).preprocess == RELEASE
    del saved["preprocess"]  # an encoder_config.json written before the field existed
    assert EncoderConfig.from_dict(saved).preprocess == RELEASE
    changed = PreprocessConfig(image_mean=(0.5, 0.5, 0.5))
    assert EncoderConfig.from_dict({**config.to_dict(), "preprocess": changed.to_dict()}).preprocess == changed
    with pytest.raises(ValueError, match="audio_target_len=100 does not fit"):
        EncoderConfig(dict(config.imagebind), config.point, PreprocessConfig(audio_target_len=100))
    with pytest.raises(ValueError, match="unknown preprocessing settings"):
        PreprocessConfig.from_dict({"image_sise": 224})


def test_layouts_follow_the_encoder_preprocessing():
    video = MODALITIES["video"].shape
    assert video.resolve() == (15, 3, 2, 224, 224) and video.accepted() == (None, 3, 2, 224, 224)
    assert video.resolve(PreprocessConfig(video_clips=2)) == (6, 3, 2, 224, 224)
    assert MODALITIES["text"].sample_shape == "[77] int64 (token ids)"
