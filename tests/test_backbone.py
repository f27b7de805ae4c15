"""Tests for demo.backbone: one description of the base LLM, written by conversion, read by
loading (also from folders that do not record it), by training, and built into LlamaConfigs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from demo.backbone import FOLDER_KEY, RELEASE, Backbone, read_backbone
from demo.convert import CONFIG_NAME
from demo.errors import WeightsError
from demo.model import ImageBindLLM, folder_backbone, read_folder_config

ROOT = Path(__file__).resolve().parents[1]


def _meta(folder: Path) -> dict:
    return json.loads((folder / CONFIG_NAME).read_text())


def _copy_without_backbone(folder: Path, tmp_path: Path) -> Path:
    copy = Path(shutil.copytree(folder, tmp_path / "older"))
    meta = _meta(copy)
    del meta[FOLDER_KEY]  # as folders converted before the backbone was recorded
    (copy / CONFIG_NAME).write_text(json.dumps(meta))
    return copy


def test_conversion_records_the_backbone(tiny_converted):
    assert _meta(tiny_converted)[FOLDER_KEY] == RELEASE.to_dict()
    config = json.loads((tiny_converted / "llm" / "config.json").read_text())
    assert config["max_position_embeddings"] == RELEASE.context_length
    assert (config["bos_token_id"], config["eos_token_id"]) == (RELEASE.bos_token_id, RELEASE.eos_token_id)


def test_a_folder_without_it_loads_with_the_same_values(tiny_converted, tiny_model, tmp_path):
    older = _copy_without_backbone(tiny_converted, tmp_path)
    assert folder_backbone(older, read_folder_config(older)) == RELEASE
    model = ImageBindLLM.from_pretrained(older, device="cpu")
    assert model.backbone == tiny_model.backbone == RELEASE
    assert model.context_length == tiny_model.context_length == 2048


def test_the_shipped_pocket_model_reads_as_the_release_backbone():
    pocket = ROOT / "weights" / "pocket"
    if not (pocket / CONFIG_NAME).is_file():
        pytest.skip("weights/pocket is not in this checkout")
    meta = read_folder_config(pocket)
    assert folder_backbone(pocket, meta) == Backbone.from_llm_config(json.loads((pocket / "llm" / "config.json").read_text()))
    assert folder_backbone(pocket, meta).context_length == 2048 and folder_backbone(pocket, meta).kv_heads is None


def test_a_recorded_backbone_that_config_json_contradicts_is_refused(tiny_converted, tmp_path):
    folder = Path(shutil.copytree(tiny_converted, tmp_path / "edited"))
    meta = _meta(folder)
    meta[FOLDER_KEY]["context_length"] = 4096
    (folder / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="describes"):
        ImageBindLLM.from_pretrained(folder, device="cpu")
    meta[FOLDER_KEY] = {"context": 4096}
    (folder / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="unknown backbone settings"):
        ImageBindLLM.from_pretrained(folder, device="cpu")
    del meta[FOLDER_KEY]
    (folder / CONFIG_NAME).write_text(json.dumps(meta))
    config = json.loads((folder / "llm" / "config.json").read_text())
    (folder / "llm" / "config.json").write_text(json.dumps({**config, "bos_token_id": [1]}))
    with pytest.raises(WeightsError, match="llm/config.json"):
        ImageBindLLM.from_pretrained(folder, device="cpu")


def test_a_backbone_whose_ids_the_tokenizer_does_not_give_is_refused(tiny_converted, tmp_path):
    folder = Path(shutil.copytree(tiny_converted, tmp_path / "ids"))
    meta = _meta(folder)
    meta[FOLDER_KEY]["bos_token_id"] = 5
    (folder / CONFIG_NAME).write_text(json.dumps(meta))
    config = json.loads((folder / "llm" / "config.json").read_text())
    (folder / "llm" / "config.json").write_text(json.dumps({**config, "bos_token_id": 5}))
    with pytest.raises(WeightsError, match="BOS/EOS ids are 1/2, the backbone's 5/2"):
        ImageBindLLM.from_pretrained(folder, device="cpu")


def test_another_backbone_reaches_config_json_and_the_model(tiny_release, tmp_path):
    from demo.convert import convert

    backbone = Backbone(context_length=512, rope_theta=500000.0)
    out = convert(tiny_release.llama_dir, tiny_release.adapter, tmp_path / "out", delta=tiny_release.delta_dir,
                  progress=False, backbone=backbone)
    model = ImageBindLLM.from_pretrained(out, device="cpu")
    assert model.backbone == backbone and model.context_length == 512
    assert model.llm.config.rope_parameters["rope_theta"] == 500000.0
    # The same description read back from llm/config.json alone.
    older = _copy_without_backbone(out, tmp_path)
    assert folder_backbone(older, read_folder_config(older)) == backbone


def test_grouped_query_attention_through_the_description():
    config = Backbone(kv_heads=2).llama_config(vocab_size=96, hidden_size=64, intermediate_size=160,
                                                num_hidden_layers=2, num_attention_heads=4)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert Backbone.from_llm_config(config.to_dict()).kv_heads == 2
    assert Backbone.from_llm_config({**config.to_dict(), "num_key_value_heads": 4}).kv_heads is None
    with pytest.raises(ValueError, match="do not divide"):
        Backbone(kv_heads=3).key_value_heads(4)


def test_conversion_refuses_a_grouped_query_backbone(tiny_release, tmp_path):
    from demo.convert import convert

    with pytest.raises(WeightsError, match="key/value heads"):
        convert(tiny_release.llama_dir, tiny_release.adapter, tmp_path / "out", progress=False, backbone=Backbone(kv_heads=2))
    assert not (tmp_path / "out" / CONFIG_NAME).exists()


def test_training_builds_the_base_with_the_backbone(tiny_release):
    from demo.convert import open_base
    from demo.train.adapter_model import AdapterModel

    model = AdapterModel.from_base(open_base(tiny_release.llama_dir), 1024, backbone=Backbone(context_length=256))
    assert model.llm.config.max_position_embeddings == 256
    assert AdapterModel.from_base(open_base(tiny_release.llama_dir), 1024).llm.config.max_position_embeddings == 2048


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown prompt template"):
        Backbone(prompt_template="chatml")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        Backbone.from_dict({"tokenizer": "tiktoken"})
    assert read_backbone({}, {"max_position_embeddings": 1024}).context_length == 1024
