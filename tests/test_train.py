"""Training (demo/train): data and bad-data reports, feature cache, schedule, loop, resume, export.

Everything runs on the tiny preset on CPU: a caption set of solid-colour images made here."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from demo.convert import MetaCheckpoint, convert, load_adapter_checkpoint, open_base
from demo.train import features as features_module
from demo.train.adapter_model import AdapterModel, stage_of
from demo.train.cli import main as train_main
from demo.train.data import (
    CAPTION_INSTRUCTION,
    IGNORE_INDEX,
    BadDataError,
    IssueLog,
    Record,
    collate,
    read_captions,
    read_instructions,
    tokenize,
    tokenize_all,
)
from demo.train.features import BLANK, FeatureStore, extract_features
from demo.train.trainer import TrainConfig, learning_rate, param_groups, train

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20),
           "black": (10, 10, 10), "white": (245, 245, 245)}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from demo.tiny import write_tiny_release

    return write_tiny_release(tmp_path_factory.mktemp("train_release"), seed=0, with_encoder=True)


@pytest.fixture(scope="module")
def caption_set(tmp_path_factory):
    """images/<colour>.png and captions.csv naming them."""
    root = tmp_path_factory.mktemp("captions")
    (root / "images").mkdir()
    lines = ["image,caption"]
    for name, rgb in COLOURS.items():
        Image.new("RGB", (48, 40), rgb).save(root / "images" / f"{name}.png")
        lines.append(f"images/{name}.png,a {name} square")
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    return root / "captions.csv"


@pytest.fixture(scope="module")
def feature_dir(release, caption_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    args = ["--no-progress", "features", "--imagebind", str(release.imagebind), "--captions", str(caption_set), "--out", str(out)]
    assert train_main(args) == 0
    return out


@pytest.fixture(scope="module")
def tokenizer(release):
    from transformers import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(str(release.root), vocab_file=str(release.tokenizer))


@pytest.fixture(scope="module")
def samples(caption_set, tokenizer):
    return tokenize_all(read_captions(caption_set, IssueLog("error")), tokenizer, 64, IssueLog("error"))


def _model(release, seed=0) -> AdapterModel:
    return AdapterModel.from_base(open_base(release.llama_dir), 1024, delta=MetaCheckpoint(release.delta_dir), seed=seed)


def _log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# End to end: CLI stage 1 on the caption set, then the pipeline loads the result
# ---------------------------------------------------------------------------------------------


def test_stage1_loss_falls_and_pipeline_loads_result(release, caption_set, feature_dir, tmp_path):
    from demo.config import GenerationConfig
    from demo.pipeline import ImageBindLLMPipeline, InputItem

    out = tmp_path / "stage1"
    args = ["--no-progress", "stage1", "--base", str(release.llama_dir), "--delta", str(release.delta_dir),
            "--captions", str(caption_set), "--features", str(feature_dir), "--out", str(out),
            "--batch-size", "3", "--grad-accum", "2", "--max-steps", "16", "--lr", "1e-2", "--warmup-steps", "2",
            "--save-every", "5", "--convert"]
    assert train_main(args) == 0
    log = _log(out)
    assert [e["step"] for e in log] == list(range(1, 17))
    first, last = sum(e["loss"] for e in log[:3]) / 3, sum(e["loss"] for e in log[-3:]) / 3
    assert last < first - 0.1, (first, last)
    assert (out / "loss.svg").read_text().startswith("<svg") and "polyline" in (out / "loss.svg").read_text()
    # Stage 1 trains only bind network, prefix and gates: the LLaMA side of the adapter is untouched.
    trained = load_adapter_checkpoint(out / "adapter.pth")
    fresh = _model(release).official_state()
    assert set(trained) == set(fresh)
    changed = {k for k in trained if not torch.equal(trained[k], fresh[k])}
    assert changed == {k for k in trained if stage_of(k) == "stage1"}
    assert all(trained[f"llama.layers.{i}.attention.gate"].abs().max() > 0 for i in range(2))

    # --convert wrote the pipeline folder; `export` makes one from any checkpoint the same way.
    export = ["--no-progress", "export", "--checkpoint", str(out / (out / "latest").read_text()), "--base", str(release.llama_dir),
              "--delta", str(release.delta_dir), "--out", str(tmp_path / "exported"), "--dtype", "float32"]
    assert train_main(export) == 0 and (tmp_path / "exported" / "adapter.safetensors").exists()
    pipe = ImageBindLLMPipeline.from_pretrained(out / "converted", device="cpu")
    result = pipe("Generate caption of this image", [InputItem("image", str(caption_set.parent / "images" / "red.png"))],
                  generation=GenerationConfig(max_new_tokens=6, temperature=0))
    assert isinstance(result.text, str) and result.finish_reason


# ---------------------------------------------------------------------------------------------
# The training model equals the converted folder the pipeline loads
# ---------------------------------------------------------------------------------------------


def test_trained_adapter_round_trips_through_convert(release, samples, feature_dir, tmp_path):
    """Start from the (all non-zero) tiny 7B.pth, train stage 2, export, convert, load with
    ImageBindLLM: same logits as the training model, injection included."""
    from demo.model import ImageBindLLM

    model = _model(release)
    model.load_official(load_adapter_checkpoint(release.adapter))
    before = model.official_state()
    store = FeatureStore(feature_dir)
    final = train(model, samples, store, TrainConfig("stage2", batch_size=3, max_steps=3, lr=1e-2, progress=False), tmp_path / "run")
    after = load_adapter_checkpoint(final)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {k for k in after if stage_of(k) == "stage2"}  # norms, biases, LoRA moved; bind/prefix/gates frozen

    folder = convert(release.llama_dir, final, tmp_path / "converted", delta=release.delta_dir, tokenizer=release.tokenizer,
                     dtype=torch.float32, progress=False)
    loaded = ImageBindLLM.from_pretrained(folder, device="cpu", dtype="float32")
    ids, _, mask = collate(samples[:2])
    embeddings = store.get([samples[0].image, BLANK])  # (2, E)
    model.eval()
    with torch.no_grad():
        expected = model(ids, mask, embeddings).logits
        got = loaded.llm(input_ids=ids, attention_mask=mask, injection_terms=loaded.conditioning_terms(embeddings)).logits
        plain = loaded.llm(input_ids=ids, attention_mask=mask).logits
    valid = mask.bool()
    assert (got - expected)[valid].abs().max() < 1e-4
    assert (plain - expected)[valid].abs().max() > 1e-3  # the injection is part of what matched


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------


def test_resumed_run_ends_where_uninterrupted_run_ends(release, samples, feature_dir, tmp_path):
    store = FeatureStore(feature_dir)
    config = TrainConfig("stage1", batch_size=2, grad_accum=2, max_steps=6, lr=5e-3, warmup_steps=2, save_every=2, progress=False)

    reference = train(_model(release), samples, store, config, tmp_path / "straight")

    def stop_at(step_to_stop: int, error: type[BaseException]):
        def on_step(step: int, loss: float) -> None:
            if step == step_to_stop:
                raise error()

        return on_step

    # Ctrl-C after step 3: a checkpoint of step 3 is written on the way out.
    with pytest.raises(KeyboardInterrupt):
        train(_model(release), samples, store, config, tmp_path / "interrupted", on_step=stop_at(3, KeyboardInterrupt))
    assert (tmp_path / "interrupted" / "latest").read_text() == "checkpoint-0000003"
    # A crash after step 5 with no chance to save: resumes from step 4, replays step 5.
    with pytest.raises(RuntimeError):
        train(_model(release), samples, store, config, tmp_path / "interrupted", on_step=stop_at(5, RuntimeError))
    resumed = train(_model(release, seed=1), samples, store, config, tmp_path / "interrupted")  # the checkpoint wins over the init

    a, b = load_adapter_checkpoint(reference), load_adapter_checkpoint(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [(e["step"], e["loss"]) for e in _log(tmp_path / "interrupted")] == [(e["step"], e["loss"]) for e in _log(tmp_path / "straight")]
    with pytest.raises(ValueError, match="settings changed"):
        train(_model(release), samples, store, TrainConfig(**{**config.__dict__, "batch_size": 3}), tmp_path / "interrupted")


def test_gradient_accumulation_equals_one_big_batch(release, samples, feature_dir, tmp_path):
    store = FeatureStore(feature_dir)
    big = TrainConfig("stage1", batch_size=6, max_steps=1, lr=1e-2, progress=False)
    split = TrainConfig("stage1", batch_size=2, grad_accum=3, max_steps=1, lr=1e-2, progress=False)
    a = load_adapter_checkpoint(train(_model(release), samples, store, big, tmp_path / "big"))
    b = load_adapter_checkpoint(train(_model(release), samples, store, split, tmp_path / "split"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_mixed_precision_path_runs(release, samples, feature_dir, tmp_path):
    """The GPU recipe (bf16 base weights, bf16 autocast, fp32 adapter) exercised on the CPU."""
    model = AdapterModel.from_base(open_base(release.llama_dir), 1024, dtype=torch.bfloat16)
    config = TrainConfig("stage2", batch_size=3, max_steps=3, lr=1e-2, precision="bf16", progress=False)
    train(model, samples, FeatureStore(feature_dir), config, tmp_path)
    losses = [e["loss"] for e in _log(tmp_path)]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert {p.dtype for p in model.official.values()} == {torch.float32}
    assert model.llm.lm_head.weight.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# Feature cache
# ---------------------------------------------------------------------------------------------


def test_feature_extraction_resumes_after_interruption(release, caption_set, feature_dir, tmp_path, monkeypatch):
    from demo.encoders.encoder import MultimodalEncoder

    encoder = MultimodalEncoder.from_pretrained(release.imagebind, device="cpu")
    images = {str(r.image): r.where for r in read_captions(caption_set, IssueLog("error"))}
    real_encode, calls = features_module._encode, []

    def failing(encoder, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_encode(encoder, batch)

    monkeypatch.setattr(features_module, "_encode", failing)
    with pytest.raises(KeyboardInterrupt):
        extract_features(images, encoder, tmp_path, IssueLog("error"), batch_size=2, shard_size=2, progress=False)
    assert len(FeatureStore(tmp_path)) == 2  # the first shard survived
    monkeypatch.setattr(features_module, "_encode", real_encode)
    store = extract_features(images, encoder, tmp_path, IssueLog("error"), batch_size=2, shard_size=2, progress=False)
    assert len(store) == len(images) + 1  # + the blank image, nothing encoded twice
    reference = FeatureStore(feature_dir)
    keys = [BLANK, *images]
    assert torch.allclose(store.get(keys), reference.get(keys), atol=1e-5)
    assert torch.allclose(store.get(keys).norm(dim=-1), torch.ones(len(keys)))


# ---------------------------------------------------------------------------------------------
# Data: formats, loss mask, bad data
# ---------------------------------------------------------------------------------------------


def test_loss_mask_covers_response_and_eos_only(tokenizer):
    record = Record("x:1", CAPTION_INSTRUCTION, None, "a red square", None)
    sample = tokenize(record, tokenizer, 128)
    ids, labels, mask = collate([sample, tokenize(Record("x:2", "hi", None, "ok", None), tokenizer, 128)])
    assert ids[0, 0] == tokenizer.bos_token_id and labels[0, len(sample.ids) - 1] == tokenizer.eos_token_id
    answer = tokenizer.decode(labels[0][labels[0] != IGNORE_INDEX][:-1])
    assert answer.strip() == "a red square"
    assert (labels[1][mask[1] == 0] == IGNORE_INDEX).all()  # padding carries no loss
    assert tokenize(record, tokenizer, len(sample.ids) - 3) is not None  # response cut, prompt kept
    assert tokenize(record, tokenizer, 5) is None  # prompt alone too long


def test_bad_captions_are_reported_with_file_and_line(caption_set, tmp_path):
    bad = tmp_path / "bad.csv"
    image = caption_set.parent / "images" / "red.png"
    bad.write_text(f"image,caption\n{image},a red square\n{tmp_path}/gone.png,a ghost\n{image},\n{image},a,b\n")
    issues = IssueLog("skip", tmp_path / "bad_data.jsonl")
    records = read_captions(bad, issues)
    assert [r.where for r in records] == [f"{bad}:2"]
    assert [i.split(": ", 1)[0] for i in issues.issues] == [f"{bad}:3", f"{bad}:4", f"{bad}:5"]
    assert "image not found" in issues.issues[0] and "empty or missing caption" in issues.issues[1]
    assert len((tmp_path / "bad_data.jsonl").read_text().splitlines()) == 3
    with pytest.raises(BadDataError, match=f"{bad}:3: image not found"):
        read_captions(bad, IssueLog("error"))

    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps({"image": str(image), "caption": "red"}) + "\n{not json\n\n" + json.dumps({"image": str(image)}) + "\n")
    issues = IssueLog("skip")
    assert len(read_captions(jsonl, issues)) == 1
    assert [i.split(": ", 1)[0] for i in issues.issues] == [f"{jsonl}:2", f"{jsonl}:4"]


def test_instruction_formats_alpaca_and_llava(caption_set, tmp_path):
    records = [
        {"instruction": "Name a colour.", "input": "", "output": "Red."},
        {"id": "1", "image": "images/blue.png",
         "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Blue."},
                           {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"instruction": "", "output": "nothing asked"},
        {"image": "images/missing.png", "conversations": [{"from": "human", "value": "?"}, {"from": "gpt", "value": "!"}]},
        {"something": "else"},
    ]
    path = caption_set.parent / "mixed.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    issues = IssueLog("skip")
    got = read_instructions(path, issues)
    assert [(r.instruction, r.input, r.output, r.image is None) for r in got] == [
        ("Name a colour.", None, "Red.", True), ("What colour?", None, "Blue.", False)]
    assert [i.split(": ", 1)[0] for i in issues.issues] == [f"{path}:4", f"{path}:5", f"{path}:6"]
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": oops}\n]')
    with pytest.raises(BadDataError, match=f"{broken}:3: malformed JSON"):
        read_instructions(broken, IssueLog("skip"))


def test_missing_features_are_reported_by_the_stage_command(release, caption_set, feature_dir, tmp_path, capsys):
    extra = tmp_path / "more.csv"
    extra.write_text(f"image,caption\n{caption_set.parent / 'images' / 'red.png'},red\n{release.tokenizer},not an image\n")
    args = ["--no-progress", "stage1", "--base", str(release.llama_dir), "--captions", str(extra), "--features", str(feature_dir),
            "--out", str(tmp_path / "out"), "--max-steps", "1", "--bad-data", "error"]
    assert train_main(args) == 1
    assert f"{extra}:3: no feature for" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Optimisation settings (reference section 11)
# ---------------------------------------------------------------------------------------------


def test_schedule_lr_scaling_and_weight_decay_groups(release):
    config = TrainConfig("stage2", batch_size=4, grad_accum=8, max_steps=100, warmup_steps=10, min_lr=1e-6).resolved(1000)
    assert config.lr == pytest.approx(1e-3 * 32 / 256) and config.weight_decay == 0.02
    assert TrainConfig("stage1").resolved(10).lr == pytest.approx(1e-4 * 4 / 256)
    lrs = [learning_rate(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(config.lr / 10) and lrs[9] == pytest.approx(config.lr)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10])) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx(1e-6 + (config.lr - 1e-6) * 0.5 * (1 + math.cos(math.pi * 45 / 90)))

    model = _model(release)
    for stage in ("stage1", "stage2"):
        model.set_stage(stage)
        keys = dict(model.trainable())
        assert keys and all(stage_of(k) == stage for k in keys)
        decay, no_decay = param_groups(model, 0.05)
        assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == 0.05
        no_decay_ids = {id(p) for p in no_decay["params"]}
        for key, param in keys.items():
            assert (id(param) in no_decay_ids) == (param.ndim == 1 or key.endswith(".bias")), key
    frozen = [p for p in model.llm.parameters() if p.requires_grad and p.ndim == 2 and p.shape[1] == 64 and p.shape[0] > 100]
    assert not frozen  # base projections and embeddings never train


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert all(command in out for command in ("features", "stage1", "stage2", "export"))


# ---------------------------------------------------------------------------------------------
# The shared injection (demo/injection.py) gives the numbers training gave before it was shared
# ---------------------------------------------------------------------------------------------
# Per-step losses recorded with the training-only injection (a per-model o_proj pre-hook) that
# preceded the shared one, on this file's tiny caption set: stage 1 from a fresh adapter, and
# stage 2 from the release's tiny adapter (non-zero gates, so the injection acts from step 1 and
# o's LoRA sees it).
RECORDED_LOSSES = {
    "stage1": [6.258162021636963, 6.272826671600342, 6.2523651123046875, 6.218956470489502, 6.279641151428223],
    "stage2": [6.242729663848877, 6.049774169921875, 6.0122389793396, 5.883491039276123, 5.72015380859375],
}


def _loss_curve(release, samples, feature_dir, out, stage):
    model = _model(release)
    if stage == "stage2":
        model.load_official(load_adapter_checkpoint(release.adapter))
    config = TrainConfig(stage, batch_size=2, grad_accum=1, max_steps=5, lr=5e-3, warmup_steps=1, progress=False)
    train(model, samples, FeatureStore(feature_dir), config, out)
    return [e["loss"] for e in _log(out)]


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_shared_injection_keeps_the_recorded_loss_curve(release, samples, feature_dir, tmp_path, stage):
    losses = _loss_curve(release, samples, feature_dir, tmp_path, stage)
    assert losses == pytest.approx(RECORDED_LOSSES[stage], rel=1e-5, abs=1e-6)
