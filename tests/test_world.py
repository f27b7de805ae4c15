"""The pocket world (demo/world, docs/pocket_world.md): generator, Meta-format micro LLaMA, and a
shortened end-to-end build whose answers must beat chance clearly, for an image AND for a sound
(never paired with text in training), so that a regression in encoder training, adapter training
or inference shows up here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from demo.inputs.registry import load_input
from demo.pipeline import POCKET_FOLDER
from demo.world.language import CANNOT_TELL, answer, flat_instruction, instruction_records, parse_answer, rotary_unpermute
from demo.world.scene import ATTRIBUTES, WorldSpec, generate_world, make_object, read_world, render


def test_objects_are_deterministic_and_vary():
    a, b = make_object(0, 5), make_object(0, 5)
    assert a == b and make_object(1, 5) != a
    image, depth = render(a)
    assert np.array_equal(image, render(b)[0]) and image.shape == (96, 96, 3) and depth.shape == (96, 96)
    assert depth.min() < 4.0 < depth.max()  # the object stands in front of the backdrop
    values = {k: {getattr(make_object(0, i), k) for i in range(200)} for k in ATTRIBUTES}
    assert all(values[k] == set(v) for k, v in ATTRIBUTES.items())  # every value occurs


def test_world_files_load_in_every_modality(tmp_path):
    generate_world(tmp_path, WorldSpec(seed=3, train=2, test=1), workers=1)
    entries = read_world(tmp_path)
    assert [e["split"] for e in entries] == ["train", "train", "test"] and "video" in entries[2]["files"]
    shapes = {"image": (3, 224, 224), "depth": (1, 224, 224), "point": (8192, 3), "audio": (3, 1, 128, 204), "video": (15, 3, 2, 224, 224)}
    for modality, path in entries[2]["files"].items():
        sample = load_input(modality, path)
        assert tuple(sample.shape) == shapes[modality] and torch.isfinite(sample).all()
    assert entries[0]["caption"] == f"a {entries[0]['size']} {entries[0]['colour']} {entries[0]['shape']}"


def test_answers_parse_back():
    entry = {"shape": "cone", "colour": "purple", "size": "large", "caption": "a large purple cone"}
    for kind in ("shape", "colour", "size"):
        assert parse_answer(answer(kind, entry))[kind] == entry[kind]
    assert parse_answer(answer("describe", entry)) == {"shape": "cone", "colour": "purple", "size": "large"}
    assert parse_answer("I do not know.") == {"shape": None, "colour": None, "size": None}


def test_answers_say_what_an_input_cannot_show():
    entry = {"shape": "cone", "colour": "purple", "size": "large", "caption": "a large purple cone"}
    assert answer("colour", entry, "depth") == "I cannot tell the colour from a depth map."
    assert answer("size", entry, "point") == "I cannot tell the size from a point cloud."
    assert parse_answer(answer("size", entry, "depth"))["size"] == "large"  # a depth map shows the size
    assert parse_answer(answer("colour", entry, "audio"))["colour"] == "purple"  # pitch is colour (scene.sound)
    assert answer("describe", entry, "point") == "It is a cone." and answer("describe", entry, "depth") == "It is a large cone."
    assert answer("size", entry, "image", "Is it big?") == "Yes, it is large."


def test_stage2_multi_turn_records_tokenise_as_the_prompt_the_app_sends(tiny_pipeline, tmp_path):
    """Training (demo.train.data.tokenize) and the app (pipeline.prompt_ids with the chat's
    history) must see the same tokens, or follow-ups are asked in a format never trained."""
    from demo.train.data import Record, tokenize

    files = {m: str(tmp_path / f"x.{m}") for m in ("image", "depth", "point", "audio")}
    entries = [{"shape": "cube", "colour": "red", "size": "small", "caption": "a small red cube", "files": files}]
    records = instruction_records(entries * 3)
    assert {r["image"] for r in records} == {files["image"], files["depth"], files["point"]}  # sounds: never with text
    multi = [r for r in records if "### Response:" in r["instruction"]]
    assert multi and all(CANNOT_TELL in r["output"] for r in records if r["image"] == files["point"] and "colour" in r["instruction"].split("\n")[-1])
    history = [("What shape is this?", "It is a cube."), ("What colour is it?", "It is red.")]
    flat = flat_instruction("Is it big?", history)
    tokenizer = tiny_pipeline.model.tokenizer
    sample = tokenize(Record("x", flat, None, "No, it is small.", None), tokenizer, 512)
    assert sample.ids[: sample.prompt_len].tolist() == tiny_pipeline.prompt_ids("Is it big?", history)[0]


def test_rotary_unpermute_inverts_the_converter():
    from demo.convert import rotary_permute

    w = torch.randn(128, 24)
    assert torch.equal(rotary_permute(rotary_unpermute(w, 4), 4), w)


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory):
    from demo.world.build import Recipe, build

    return build(tmp_path_factory.mktemp("pocket"), Recipe.quick())


def test_quick_build_answers_beat_chance(quick_build):
    """Small world, few steps (about 2-3 minutes on 2 CPU cores)."""
    numbers = json.loads((quick_build / "evaluation.json").read_text())
    answers = numbers["answers"]
    chance = {k: 1 / len(v) for k, v in ATTRIBUTES.items()}
    # Colour and size are learned within the few steps (measured: image 96% / 100%, sound 54-71% /
    # 88%); shape needs the full recipe, so it is not checked here.
    image = answers["image cache off"]
    assert image["colour"] >= chance["colour"] + 0.4 and image["size"] >= chance["size"] + 0.3, image
    # A sound was never paired with text: what the LLM says about it comes through the image space.
    audio = {k: max(answers["audio cache off"][k], answers["audio cache on"][k]) for k in ("colour", "size")}
    assert audio["colour"] >= chance["colour"] + 0.25 and audio["size"] >= chance["size"] + 0.2, answers


def test_quick_build_follow_ups_and_what_an_input_cannot_show(quick_build):
    """Issue 13: a follow-up after the shape question (the model's own answer in the history, as
    the app sends it) is answered about the object; a colour question about a point cloud gets
    "I cannot tell", learned from stage 2's records, not hard-coded anywhere."""
    talk = json.loads((quick_build / "evaluation.json").read_text())["dialogues"]
    chance = 1 / len(ATTRIBUTES["colour"])
    assert talk["follow_up"]["image"]["colour"] >= chance + 0.4, talk
    assert talk["follow_up"]["audio"]["colour"] >= chance + 0.2, talk  # a sound, never paired with text
    # The short recipe learns the refusal in one form at least (measured: 100% of follow-ups,
    # 0% single-turn; the full recipe: 68% / 53%); before issue 13 no answer said it.
    assert max(talk["cannot"]["point"]["colour"], talk["follow_up"]["point"]["colour"]) >= 0.5, talk
    assert (quick_build / "evaluation.md").read_text().count("cannot tell") >= 3


def test_quick_build_image_decoder_draws_recognisable_objects(quick_build):
    """Issue 17: pictures drawn by the pocket decoder from a held-out object's image and sound
    embeddings are recognised (nearest training image) as the object's colour above chance."""
    pictures = json.loads((quick_build / "evaluation.json").read_text())["image_decoder"]
    rows, chance = pictures["rows"], 1 / len(ATTRIBUTES["colour"])
    assert rows["image cache off"]["colour"] >= chance + 0.3, rows
    assert max(rows["audio cache off"]["colour"], rows["audio cache on"]["colour"]) >= chance + 0.1, rows
    assert pictures["decoder_seconds"] < 1.0
    meta = json.loads((quick_build / "imagebind_llm.json").read_text())
    assert meta["image_decoder"] == "image_decoder" and (quick_build / "image_decoder" / "model.safetensors").is_file()


def test_quick_build_loads_like_the_shipped_model(quick_build):
    from demo.config import GenerationConfig
    from demo.pipeline import ImageBindLLMPipeline, InputItem

    pipe = ImageBindLLMPipeline.from_pretrained(quick_build, device="cpu", cache_path=quick_build / "cache.index")
    assert not pipe.is_placeholder and "pocket" in pipe.notice.lower()
    example = sorted((quick_build / "examples").glob("world-0.png"))[0]
    text = pipe("Describe this object.", [InputItem("image", example)], generation=GenerationConfig(temperature=0, max_new_tokens=16)).text
    assert text.strip()
    picture = pipe.imagine([InputItem("audio", example.with_suffix(".wav"))], seed=0, size=64)  # offline image output
    assert picture.image.size == (64, 64)


SHIPPED_EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "world"


@pytest.mark.skipif(not (POCKET_FOLDER / "imagebind_llm.json").is_file(), reason="weights/pocket is not built")
def test_shipped_pocket_model_answers_about_its_examples():
    """The checkpoint in the repository: `python app.py`'s default, with its banner and examples."""
    import app
    from demo.config import GenerationConfig
    from demo.pipeline import ImageBindLLMPipeline, InputItem

    pipe = ImageBindLLMPipeline.from_pretrained("pocket", device="cpu")
    greedy = GenerationConfig(temperature=0, max_new_tokens=24)
    objects = json.loads((SHIPPED_EXAMPLES / "objects.json").read_text())
    for n, truth in enumerate(objects):
        for modality, suffix in (("image", ".png"), ("audio", ".wav")):
            text = pipe("What colour is it?", [InputItem(modality, SHIPPED_EXAMPLES / f"world-{n}{suffix}")], generation=greedy).text
            assert parse_answer(text)["colour"] == truth["colour"], (modality, n, text)
    # A conversation as the app holds it: the follow-up sees the first answer in the history.
    image = [InputItem("image", SHIPPED_EXAMPLES / "world-0.png")]
    first = pipe("What shape is this?", image, generation=greedy).text
    follow = pipe("What colour is it?", image, history=[("What shape is this?", first)], generation=greedy).text
    assert parse_answer(follow)["colour"] == objects[0]["colour"], (first, follow)
    depth = pipe("What colour is it?", [InputItem("depth", SHIPPED_EXAMPLES / "world-1.depth.png")], generation=greedy).text
    assert "cannot tell" in depth, depth
    picture = pipe.imagine([InputItem("audio", SHIPPED_EXAMPLES / "world-0.wav")], seed=0)  # image output offline
    assert picture.image.size == (32, 32)
    assert app.default_preset() == "pocket"
    rows = app.available_examples()
    assert {m for row in rows if row["title"].startswith("World:") for m, _, _ in row["inputs"]} >= {"image", "audio", "point", "depth", "video"}
    config = app.build_demo(pipe).get_config_file()
    assert any("Pocket world model" in str(c.get("props", {}).get("value", "")) for c in config["components"])
