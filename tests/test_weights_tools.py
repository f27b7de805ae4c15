"""Command-line weight tools: download table, size checks, offline errors, conversion CLI."""

from __future__ import annotations

import json

import pytest

from demo.errors import WeightsError
from weights import convert as convert_cli
from weights import download


def test_every_group_names_known_files():
    for keys in download.GROUPS.values():
        assert set(keys) <= set(download.FILES)
    for item in download.FILES.values():
        assert (item.url is None) != (item.repo_id is None), item.key


def test_size_check_catches_partial_files(tmp_path):
    path = tmp_path / "7B.pth"
    path.write_bytes(b"x" * 10)
    download.check_size(path, 10)
    with pytest.raises(WeightsError, match="incomplete.*again to resume"):
        download.check_size(path, 11)


def test_offline_download_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(WeightsError, match="copy it to the --dest folder as 7B.pth"):
        download.download_hub(download.FILES["adapter"], tmp_path)


def test_list_and_help(capsys):
    assert download.main(["--list", "--dest", "d"]) == 0
    assert "knn.index" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        download.main(["--help"])
    assert "Groups:" in capsys.readouterr().out


def test_convert_cli(tmp_path, tiny_release, capsys):
    code = convert_cli.main([
        "--base", str(tiny_release.llama_dir), "--adapter", str(tiny_release.adapter), "--delta", str(tiny_release.delta_dir),
        "--out", str(tmp_path / "out"), "--dtype", "float32",
    ])
    assert code == 0
    assert json.loads((tmp_path / "out" / "imagebind_llm.json").read_text())["format_version"] == 1
    assert "python app.py --weights" in capsys.readouterr().out


def test_convert_cli_reports_errors(tmp_path, tiny_release, capsys):
    code = convert_cli.main(["--base", str(tmp_path), "--adapter", str(tiny_release.adapter), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "neither a Meta-format LLaMA" in capsys.readouterr().err
