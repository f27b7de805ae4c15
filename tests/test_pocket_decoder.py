"""The pocket world's image decoder (demo/imagine/pocket.py): training on hand-made data, the
ImageGenerator contract (seed, noise level, size, progress, cancel, errors), saving/loading, and
`ImageBindLLMPipeline.from_pretrained` loading it from a folder's "image_decoder" entry so that
`imagine` works offline. Its accuracy on the world is checked by the quick build (test_world.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from demo.cancel import CancelToken
from demo.errors import Cancelled, InputError, WeightsError
from demo.imagine import ImageSettings, PocketDecoder
from demo.imagine.pocket import DecoderConfig, DecoderNet, DecoderTraining, train_decoder

SMALL = DecoderConfig(embed_dim=16, hidden=32, base=4, channels=(16, 8))  # 16 px, trains in seconds
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.1, 0.2, 0.9], [0.9, 0.8, 0.1]])  # (4, 3)


@pytest.fixture(scope="module")
def trained():
    """Four directions, each drawn as a flat colour; inputs come with random norms."""
    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)  # (4, E)
    which = torch.arange(64) % 4
    vectors = directions[which] * torch.rand(64, 1).mul(5).add(0.5)  # (64, E), norms 0.5..5.5
    images = COLOURS[which][:, :, None, None].expand(-1, -1, 16, 16)  # (64, 3, 16, 16)
    return train_decoder(vectors, images, DecoderTraining(steps=150, batch_size=16, lr=1e-2, input_noise=0.1), SMALL), directions


def mean_rgb(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0) / 255


def test_training_learns_each_directions_picture_whatever_the_norm(trained):
    decoder, directions = trained
    for direction, colour in zip(directions, COLOURS):
        for norm in (0.3, 7.0):  # norms outside the training range: the direction decides
            assert np.abs(mean_rgb(decoder.generate(direction * norm, ImageSettings(seed=0))) - colour.numpy()).max() < 0.12


def test_seed_and_noise_level(trained):
    decoder, directions = trained
    v = directions[0]
    pixels = lambda **s: np.asarray(decoder.generate(v, ImageSettings(**s)))  # noqa: E731
    assert np.array_equal(pixels(seed=1), pixels(seed=2))  # noise level 0: the seed changes nothing
    assert np.array_equal(pixels(seed=1, noise_level=500), pixels(seed=1, noise_level=500))
    assert not np.array_equal(pixels(seed=1, noise_level=500), pixels(seed=2, noise_level=500))
    with pytest.raises(InputError, match="seed"):
        decoder.generate(v, ImageSettings())


def test_size_progress_and_cancel(trained):
    decoder, directions = trained
    assert decoder.generate(directions[0], ImageSettings(seed=0)).size == (16, 16)  # native
    assert decoder.generate(directions[0], ImageSettings(seed=0, size=(48, 32))).size == (48, 32)
    seen = []
    decoder.generate(directions[0], ImageSettings(seed=0), progress=lambda k, n: seen.append((k, n)))
    assert seen == [(1, 2), (2, 2)]  # one report per upsampling stage
    token = CancelToken()
    with pytest.raises(Cancelled):
        decoder.generate(directions[0], ImageSettings(seed=0), progress=lambda k, n: token.cancel(), cancel=token)


def test_bad_inputs_are_clear_errors(trained, tmp_path):
    decoder, _ = trained
    with pytest.raises(InputError, match=r"\[16\]"):
        decoder.generate(torch.ones(8), ImageSettings(seed=0))
    with pytest.raises(InputError, match="noise_level"):
        decoder.generate(torch.ones(16), ImageSettings(seed=0, noise_level=1000))
    with pytest.raises(WeightsError, match="demo.world build"):
        PocketDecoder.from_pretrained(tmp_path / "missing")


def test_save_and_load_give_the_same_picture(trained, tmp_path):
    decoder, directions = trained
    loaded = PocketDecoder.from_pretrained(decoder.save_pretrained(tmp_path / "decoder"))
    assert loaded.net.config == SMALL
    a = np.asarray(decoder.generate(directions[1], ImageSettings(seed=0)), dtype=int)
    b = np.asarray(loaded.generate(directions[1], ImageSettings(seed=0)), dtype=int)
    assert np.abs(a - b).max() <= 2  # float16 weights on disk


def test_the_pipeline_loads_the_decoder_from_the_folder_and_imagines_offline(tmp_path):
    from PIL import Image

    from demo.encoders.encoder import EncoderConfig
    from demo.pipeline import ImageBindLLMPipeline, InputItem, ensure_tiny

    folder = shutil.copytree(ensure_tiny(), tmp_path / "converted")
    width = EncoderConfig.preset("tiny").out_dim
    PocketDecoder(DecoderNet(DecoderConfig(embed_dim=width, hidden=16, channels=(8, 8)))).save_pretrained(folder / "image_decoder")
    meta = json.loads((folder / "imagebind_llm.json").read_text())
    (folder / "imagebind_llm.json").write_text(json.dumps({**meta, "image_decoder": "image_decoder"}))
    pipe = ImageBindLLMPipeline.from_pretrained(folder, device="cpu")
    assert isinstance(pipe.image_generator, PocketDecoder)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    steps = []
    out = pipe.imagine([InputItem("image", image)], seed=3, size=64, progress=lambda k, n: steps.append(k))
    assert out.image.size == (64, 64) and out.settings.seed == 3 and steps == [1, 2]
    again = pipe.imagine([InputItem("image", image)], seed=3, size=64)
    assert np.array_equal(np.asarray(out.image), np.asarray(again.image))
    # The record and the chat's note name only what this model reads (no prompt, steps or guidance).
    from app_handlers import picture_note
    from demo.serve.content import picture_record

    record = picture_record(out)
    assert record["settings_used"] == ["noise_level", "seed", "size"]
    note = picture_note(record)
    assert note["metadata"]["title"] == "🎨 Seed 3 · noise level 0 · 64×64"
    assert "This image model has no prompt, negative prompt, steps, guidance" in note["content"]
