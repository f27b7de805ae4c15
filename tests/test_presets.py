"""Tests for demo.presets: one registry of the models loadable by name."""

from __future__ import annotations

import pytest

from demo.convert import CONFIG_NAME
from demo.errors import WeightsError
from demo.presets import POCKET_FOLDER, PRESETS, RELEASE_FOLDER, TINY_VERSION, Preset, default_preset, preset_of, resolve


def test_the_registry_names_every_preset():
    assert list(PRESETS) == ["tiny", "pocket", "release"]
    assert all(isinstance(p, Preset) and p.description for p in PRESETS.values())
    assert PRESETS["pocket"].world and not PRESETS["tiny"].world


def test_tiny_is_built_once_in_home(tmp_path):
    folder = resolve("tiny", tmp_path)
    assert folder == tmp_path / TINY_VERSION / "converted" and (folder / CONFIG_NAME).is_file()
    stamp = (folder / CONFIG_NAME).stat().st_mtime_ns
    assert resolve("tiny", tmp_path) == folder and (folder / CONFIG_NAME).stat().st_mtime_ns == stamp


def test_folders_and_presets_are_told_apart(tmp_path):
    assert resolve(tmp_path / "mine") == tmp_path / "mine"
    assert preset_of("pocket") is PRESETS["pocket"] and preset_of(str(POCKET_FOLDER)) is PRESETS["pocket"]
    assert preset_of(tmp_path) is None and preset_of("tiny") is PRESETS["tiny"]
    assert default_preset() == ("pocket" if (POCKET_FOLDER / CONFIG_NAME).is_file() else "tiny")


def test_a_missing_shipped_folder_says_what_to_do(tmp_path):
    absent = Preset("absent", "nothing here", tmp_path / "none", missing="convert it first")
    with pytest.raises(WeightsError, match="convert it first"):
        absent.folder()
    if not (RELEASE_FOLDER / CONFIG_NAME).is_file():
        with pytest.raises(WeightsError, match="README, section Weights"):
            resolve("release")


def test_a_preset_cache_index_is_used_only_when_present(tmp_path):
    preset = Preset("x", "x", tmp_path, cache_index="cache.index")
    assert preset.default_cache(tmp_path) is None
    (tmp_path / "cache.index").write_bytes(b"")
    assert preset.default_cache(tmp_path) == tmp_path / "cache.index"
