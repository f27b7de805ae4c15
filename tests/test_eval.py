"""demo/eval: MME layout and official scoring, resume, caption metrics, pocket tasks, and the
lmms-eval / VLMEvalKit wrappers, on tiny data made here (no network)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from demo.cache import RetrievalSettings
from demo.config import GenerationConfig
from demo.eval import captions, mme
from demo.eval.runner import Runner, RunSettings, Sample, sample_key
from demo.pipeline import InputItem

SHORT = GenerationConfig(max_new_tokens=3, temperature=0.0)


def _image(path: Path, colour: str) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)
    return path


def make_mme(root: Path) -> Path:
    """Three subtasks in the three official forms: split (artwork), flat (count), and a combined
    eval-tool list (code_reasoning, listed in root/lists)."""
    data = root / "MME_Benchmark_release_version"
    for i, colour in enumerate(("red", "blue")):
        _image(data / "artwork" / "images" / f"{i}.jpg", colour)
        (data / "artwork" / "questions_answers_YN" / f"{i}.txt").parent.mkdir(parents=True, exist_ok=True)
        (data / "artwork" / "questions_answers_YN" / f"{i}.txt").write_text(
            f"Is it {colour}? Please answer yes or no.\tYes\nIs it green? Please answer yes or no.\tNo\n")
    for i in range(3):
        _image(data / "count" / f"00{i}.png", "white")
        (data / "count" / f"00{i}.txt").write_text(f"Are there {i} cats? Please answer yes or no.\tYes\n"
                                                    f"Are there {i + 5} cats? Please answer yes or no.\tNo\n")
    _image(data / "code_reasoning" / "0001.png", "black")
    (root / "lists").mkdir()
    (root / "lists" / "code_reasoning.txt").write_text(
        "0001.png\tDoes it print 1? Please answer yes or no.\tNo\n0001.png\tDoes it print 2? Please answer yes or no.\tYes\n")
    return data


def test_mme_reads_the_official_layouts(tmp_path):
    data = make_mme(tmp_path)
    samples = mme.load(data, listing=tmp_path / "lists")
    by_task = {}
    for s in samples:
        by_task.setdefault(s.reference["subtask"], []).append(s)
    assert {k: len(v) for k, v in by_task.items()} == {"count": 6, "artwork": 4, "code_reasoning": 2}
    first = by_task["artwork"][0]
    assert first.question == "Is it red? Please answer yes or no."
    assert first.reference["truth"] == "yes" and first.inputs[0].source.endswith("artwork/images/0.jpg")
    assert [s.reference["truth"] for s in by_task["code_reasoning"]] == ["no", "yes"]  # the list's order
    # the suffix option replaces the official ending; --limit keeps whole images
    bare = mme.load(data, suffix="Answer yes or no only.", limit=1, subtasks=("count",))
    assert [s.question for s in bare] == ["Are there 0 cats? Answer yes or no only.", "Are there 5 cats? Answer yes or no only."]
    assert mme.load(data, suffix="", limit=1, subtasks=("count",))[0].question == "Are there 0 cats?"


def test_mme_answer_parsing_is_the_official_one():
    cases = {"Yes": "yes", "no": "no", "No.": "no", "yes, there is": "yes", "Nope": "no", "not sure": "no",
             "There is one": "other", "maybe": "other", " yes": "yes", "I think yes": "other", "nonsense yes": "no"}
    assert {text: mme.parse_answer(text) for text in cases} == cases


def test_mme_scores_match_a_hand_computation():
    def rec(task, image, truth, answer):
        return {"answer": answer, "reference": {"subtask": task, "image": image, "truth": truth}}

    records = [
        rec("existence", "1", "yes", "Yes"), rec("existence", "1", "no", "No."),            # both right
        rec("existence", "2", "yes", "maybe"), rec("existence", "2", "no", "no"),            # 'other' is wrong
        rec("existence", "3", "yes", "yes, there is"), rec("existence", "3", "no", "Nope"),  # both right
        rec("count", "1", "yes", "There is one"), rec("count", "1", "no", "no"),
        rec("count", "2", "yes", "yes"), rec("count", "2", "no", "yes"),
        rec("code_reasoning", "1", "yes", "yes"), rec("code_reasoning", "1", "no", "yes"),
    ]
    scores = mme.score(records)
    existence, count, code = (scores["subtasks"][k] for k in ("existence", "count", "code_reasoning"))
    # existence: 5 of 6 answers right, 2 of 3 images with both right -> 100 * (5/6 + 2/3) = 150
    assert (existence["accuracy"], existence["accuracy_plus"]) == (5 / 6, 2 / 3)
    assert existence["score"] == pytest.approx(150.0) and existence["other"] == 1
    # count: 2 of 4 right, no image with both -> 50; code_reasoning: 1 of 2, none -> 50
    assert (count["accuracy"], count["accuracy_plus"], count["score"]) == (0.5, 0.0, 50.0)
    assert (code["accuracy"], code["accuracy_plus"], code["score"]) == (0.5, 0.0, 50.0)
    assert scores["perception"] == pytest.approx(200.0) and scores["cognition"] == pytest.approx(50.0)
    assert scores["complete"] == {"perception": False, "cognition": False}
    assert "| **perception** | | | | | | **200.00** (subtasks missing" in mme.table(scores)


def test_mme_run_resumes_without_generating(tmp_path, tiny_pipeline):
    data = make_mme(tmp_path)
    samples = mme.load(data, subtasks=("artwork", "count"), limit=2)  # 4 images, 8 questions
    settings = RunSettings(model="tiny", generation=SHORT)
    first = Runner(tiny_pipeline, tmp_path / "out", settings, progress=False)
    records = first.answer_all(samples)
    assert first.generated == 8 and len((tmp_path / "out" / "answers.jsonl").read_text().splitlines()) == 8
    assert len(first._embeddings) == 4  # one embedding per image, two questions each

    again = Runner(tiny_pipeline, tmp_path / "out", settings, progress=False)
    assert [r["answer"] for r in again.answer_all(samples)] == [r["answer"] for r in records]
    assert again.generated == 0
    # a changed setting is a new key: answered afresh, the old answers kept
    other = Runner(tiny_pipeline, tmp_path / "out", RunSettings(model="tiny", generation=GenerationConfig(max_new_tokens=2, temperature=0.0)),
                   progress=False)
    other.answer_all(samples[:1])
    assert other.generated == 1 and len((tmp_path / "out" / "answers.jsonl").read_text().splitlines()) == 9

    # the official results files hold what was scored
    folder = mme.write_official_results(records, tmp_path / "out")
    lines = (folder / "artwork.txt").read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["0.jpg", "Is it red? Please answer yes or no.", "Yes"]


def test_sample_key_depends_on_every_setting():
    sample = Sample("s", "Q?", [InputItem("image", "a.png")])
    base = RunSettings(model="tiny", generation=SHORT)
    keys = {
        sample_key(sample, base),
        sample_key(sample, RunSettings(model="pocket", generation=SHORT)),
        sample_key(sample, RunSettings(model="tiny", generation=GenerationConfig(max_new_tokens=4, temperature=0.0))),
        sample_key(Sample("s", "Q? Please answer yes or no.", sample.inputs), base),
        sample_key(Sample("s", "Q?", [InputItem("image", "b.png")]), base),
        sample_key(Sample("s", "Q?", sample.inputs, cache=RetrievalSettings(enabled=True)), base),
    }
    assert len(keys) == 6 and all(k.startswith("s|") for k in keys)


def test_mme_command_writes_scores_and_resumes(tmp_path, tiny_pipeline):
    from demo.eval.__main__ import main

    data = make_mme(tmp_path)
    argv = ["mme", "--data", str(data), "--model", "tiny", "--out", str(tmp_path / "out"), "--limit", "1",
            "--subtasks", "artwork", "count", "--max-new-tokens", "2", "--no-progress"]
    assert main(argv) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["generated"] == 4 and set(scores["subtasks"]) == {"artwork", "count"}
    assert scores["settings"]["generation"] == {"max_new_tokens": 2, "temperature": 0.0, "top_p": 0.75, "seed": None}
    # recompute from the official results file the command wrote
    for task, row in scores["subtasks"].items():
        lines = [line.split("\t") for line in (tmp_path / "out" / "mme_results" / f"{task}.txt").read_text().splitlines()]
        right = [mme.parse_answer(answer) == truth.lower() for _, _, truth, answer in lines]
        assert row["accuracy"] == sum(right) / len(right)
    assert (tmp_path / "out" / "scores.md").read_text().startswith("| subtask |")
    assert main(argv) == 0
    assert json.loads((tmp_path / "out" / "scores.json").read_text())["generated"] == 0


def test_command_errors_say_what_to_do(tmp_path, capsys):
    from demo.eval.__main__ import main

    assert main(["mme", "--data", str(tmp_path / "missing"), "--model", "tiny", "--no-progress"]) == 2
    assert "get MME_Benchmark_release_version from the authors" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["mme", "--data", str(tmp_path / "empty"), "--model", "tiny", "--no-progress"]) == 2
    assert "holds none of the MME subtask folders" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------
def test_caption_metrics_against_hand_values():
    # candidate "a red cube" against "a red cube is here": every n-gram matches, brevity penalty
    # exp(1 - 5/3) for the 3-word candidate against the 5-word reference
    metrics = captions.caption_metrics({"x": "A red cube."}, {"x": ["a red cube is here"]})
    bp = math.exp(1 - 5 / 3)
    assert metrics["BLEU-1"] == pytest.approx(bp, rel=1e-6) and metrics["BLEU-3"] == pytest.approx(bp, rel=1e-6)
    assert captions.tokenize("A dog's bark, loud!") == "a dog's bark loud"
    # CIDEr-D: an exact caption scores above a wrong one on the same set (document frequencies from it)
    refs = {"a": ["a dog barks loudly"], "b": ["rain falls on a roof"], "c": ["a car passes by"]}
    good = captions.caption_metrics({"a": "a dog barks loudly", "b": "rain falls on a roof", "c": "a car passes by"}, refs)
    bad = captions.caption_metrics({"a": "rain falls on a roof", "b": "a car passes by", "c": "a dog barks loudly"}, refs)
    assert good["CIDEr"] > 1.0 > bad["CIDEr"] and good["BLEU-4"] == pytest.approx(1.0, abs=1e-6)


def test_caption_benchmark_on_audio_and_image(tmp_path, tiny_pipeline):
    import numpy as np
    import soundfile

    soundfile.write(tmp_path / "beep.wav", 0.3 * np.sin(np.linspace(0, 880 * np.pi, 16000)).astype("float32"), 16000)
    _image(tmp_path / "red.png", "red")
    rows = [{"id": "beep", "modality": "audio", "file": "beep.wav", "captions": ["a high beep", "a tone sounds"]},
            {"id": "red", "modality": "image", "file": "red.png", "captions": ["a red square"], "question": "What is it?"}]
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = captions.load(tmp_path / "set.jsonl")
    assert samples[0].question == "Describe this sound in one sentence." and samples[1].question == "What is it?"
    runner = Runner(tiny_pipeline, tmp_path / "out", RunSettings(model="tiny", generation=SHORT), progress=False)
    scores = captions.score(runner.answer_all(samples))
    assert set(scores["modalities"]) == {"audio", "image", "all"} and scores["modalities"]["all"]["samples"] == 2
    assert all(0.0 <= row["BLEU-1"] <= 1.0 and row["CIDEr"] >= 0.0 for row in scores["modalities"].values())
    assert "| audio | 1 |" in captions.table(scores)


# ---------------------------------------------------------------------------------------------
# Pocket world tasks
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pocket_pipeline():
    from demo.pipeline import POCKET_FOLDER, ImageBindLLMPipeline

    return ImageBindLLMPipeline.from_pretrained("pocket", device="cpu", cache_path=POCKET_FOLDER / "cache.index")


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from demo.world.scene import WorldSpec, generate_world, read_world

    folder = tmp_path_factory.mktemp("world")
    generate_world(folder, WorldSpec(seed=0, train=0, test=3), workers=1)  # 3 held-out objects (videos too)
    return folder, read_world(folder, "test")


def test_pocket_tasks_on_a_small_world(tmp_path, pocket_pipeline, small_world):
    from demo.eval import pocket

    _, entries = small_world
    settings = RunSettings(model="pocket", generation=pocket.GREEDY)
    runner = Runner(pocket_pipeline, tmp_path / "out", settings, progress=False)
    result = pocket.run(runner, entries, ("image", "audio"), mix=1, cache_settings=[False])
    # 3 objects x 3 attributes x 2 modalities, then one mix (objects 1 and 2 differ in everything) x 3 questions
    assert runner.generated == 3 * 3 * 2 + 3
    assert list(result.rows) == [("image", False), ("audio", False)]
    assert all(v in (0, 1 / 3, 2 / 3, 1) for row in result.rows.values() for v in row.values())
    assert result.mix["pairs"] == 1 and 0 <= result.mix["both"] <= 1
    # cache-on rows: the pipeline's cache (loaded) gives them by default; points carry shape only
    points = pocket.run(runner, entries, ("point",), mix=0)
    assert list(points.rows) == [("point", False), ("point", True)] and set(points.rows[("point", True)]) == {"shape"}
    assert runner.generated == 21 + 3 * 2
    result.rows.update(points.rows)
    table = result.readme_table()
    assert table.splitlines()[2].startswith("| image | yes | ") and "| point cloud | stage 2 only | " in table and " / " in table
    # the memoised embeddings give the same answer as the pipeline fed the file
    entry = entries[0]
    direct = pocket_pipeline("What colour is it?", [InputItem("image", entry["files"]["image"])], generation=pocket.GREEDY).text
    record = next(r for r in runner.answer_all(pocket.attribute_samples(entries[:1], ("image",), [False]))
                  if r["reference"]["attribute"] == "colour")
    assert record["answer"] == direct and record["cached"]
    # resumed: nothing new
    again = Runner(pocket_pipeline, tmp_path / "out", settings, progress=False)
    assert pocket.run(again, entries, ("image", "audio"), mix=1, cache_settings=[False]).mix == result.mix
    assert again.generated == 0


def test_pocket_command_and_world_shim(tmp_path, small_world, pocket_pipeline):
    from demo.eval.__main__ import main
    from demo.world.evaluate import Evaluation, evaluate  # the old import path still works

    world, entries = small_world
    argv = ["pocket", "--world", str(world), "--modalities", "audio", "--cache", "off", "--mix-pairs", "0", "--limit", "2",
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["generated"] == 2 * 3 and list(scores["answers"]) == ["audio cache off"] and scores["objects"] == 2
    assert "| audio | **no** | " in (tmp_path / "out" / "scores.md").read_text()
    # demo.world.build's call, unchanged: one object, images, no mixes
    old = evaluate(pocket_pipeline, entries[:1], ("image",), mix_pairs=0)
    assert isinstance(old, Evaluation) and list(old.rows) == [("image", False), ("image", True)] and old.objects == 1


# ---------------------------------------------------------------------------------------------
# lmms-eval plugin and VLMEvalKit wrapper
# ---------------------------------------------------------------------------------------------
def _tiny_task(tmp_path):
    """A two-document lmms-eval style task: an image question and an audio question."""
    import numpy as np
    from PIL import Image

    docs = [{"image": Image.new("RGB", (32, 32), "red"), "question": "What colour is it?"},
            {"audio": {"array": 0.3 * np.sin(np.linspace(0, 880 * np.pi, 16000)), "sampling_rate": 16000}, "question": "What is it?"}]

    def doc_to_visual(doc):
        return [doc["image"]] if "image" in doc else [doc["audio"]]

    return {"tiny_task": {"test": docs}}, doc_to_visual


def test_lmms_eval_plugin_generate_until(tmp_path, tiny_pipeline, monkeypatch):
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms

    from demo.eval.lmms_plugin.models.imagebind_llm import ImageBindLLM

    # `--model imagebind_llm` resolves to our class through lmms-eval's own plugin registry
    monkeypatch.setenv("LMMS_EVAL_PLUGINS", "demo.eval.lmms_plugin")
    import lmms_eval.models as registry

    with pytest.warns(DeprecationWarning):
        models = registry._initialize_model_registry()
    assert models.get_model_class("imagebind_llm") is ImageBindLLM
    # ... and through the entry-point payload, once the project is installed as a distribution
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from demo.eval.lmms_plugin import manifest

    fresh = ModelRegistryV2()
    fresh.register_manifest(manifest())
    assert fresh.get_model_class("imagebind_llm") is ImageBindLLM

    task_dict, doc_to_visual = _tiny_task(tmp_path)
    model = ImageBindLLM(pipeline=tiny_pipeline, max_new_tokens=4)
    assert isinstance(model, lmms)
    model.task_dict = task_dict
    requests = [Instance("generate_until", (doc["question"], {"max_new_tokens": 3, "temperature": 0, "until": ["\n\n"]}, doc_to_visual, i,
                                            "tiny_task", "test"), idx=0, metadata={"task": "tiny_task", "doc_id": i, "repeats": 1})
                for i, doc in enumerate(task_dict["tiny_task"]["test"])]
    answers = model.generate_until(requests)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    # the same answers as the pipeline fed the same media directly, greedy, 3 new tokens
    greedy3 = GenerationConfig(max_new_tokens=3, temperature=0.0)
    image = task_dict["tiny_task"]["test"][0]["image"]
    assert answers[0] == tiny_pipeline("What colour is it?", [InputItem("image", image)], generation=greedy3).text.split("\n\n")[0]
    with pytest.raises(NotImplementedError, match="generation tasks"):
        model.loglikelihood(requests)


def test_lmms_eval_generation_arguments():
    from demo.eval.adapters import cut_at, generation_from, modality_of_path

    default = GenerationConfig(max_new_tokens=64, temperature=0.1, top_p=0.75)
    assert generation_from({}, default) == default
    assert generation_from({"do_sample": False, "temperature": 0.7, "max_new_tokens": 5}, default) == GenerationConfig(5, 0.0, 0.75)
    assert generation_from({"temperature": 0.2, "top_p": None}, default).top_p == 0.75
    assert generation_from({"max_new_tokens": 1024, "temperature": 1.5}, default) == GenerationConfig(512, 1.0, 0.75)
    assert cut_at("yes\n\nQuestion: more", ["\n\n", "Question:"]) == "yes" and cut_at("yes", None) == "yes"
    assert [modality_of_path(p) for p in ("a.MP4", "b.wav", "c.ply", "d.jpeg")] == ["video", "audio", "point", "image"]


def test_vlmevalkit_wrapper(tmp_path, tiny_pipeline):
    from demo.eval.vlmeval import ImageBindLLMVLM

    image = _image(tmp_path / "red.png", "red")
    model = ImageBindLLMVLM(pipeline=tiny_pipeline, generation=GenerationConfig(max_new_tokens=3, temperature=0.0))
    assert model.normalise([str(image), "What is it?"]) == [{"type": "image", "value": str(image)}, {"type": "text", "value": "What is it?"}]
    bare = model.generate([str(image), "What is it?"])
    typed = model.generate([{"type": "image", "value": str(image)}, {"type": "text", "value": "What is it?"}], dataset="tiny")
    assert bare == typed == tiny_pipeline("What is it?", [InputItem("image", str(image))], generation=model.generation).text
