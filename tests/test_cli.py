"""The `ibllm` command line: the console script pyproject.toml declares, each command's help, one command end to end."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from demo.cli import STAGES

ROOT = Path(__file__).resolve().parents[1]


def console_script():
    """The function `pip install -e .` makes `ibllm` call, read from pyproject.toml as pip reads it."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["ibllm"]
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        console_script()(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name, stage in STAGES.items():
        assert f"    {name} " in out and stage.same_as in out  # listed, with the command that runs the same


def test_unknown_or_missing_command_names_the_choices(capsys):
    for argv in (["bogus"], []):
        with pytest.raises(SystemExit) as exit_:
            console_script()(argv)
        assert exit_.value.code == 2
        assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize("command", list(STAGES))
def test_every_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        console_script()([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "--help" in out  # the stage's own parser answered, with its options


def test_cache_build_and_compact_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "feats.npy", rng.standard_normal((64, 16)).astype(np.float32))
    main = console_script()
    assert main(["cache", "build", "--embeddings", str(tmp_path / "feats.npy"), "-o", str(tmp_path / "c.index"), "--dim", "16", "--no-progress"]) == 0
    assert main(["cache", "compact", str(tmp_path / "c.index"), str(tmp_path / "s.index"), "--nlist", "4", "--dim", "16", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out

    from demo.cache import VisualCache

    cache = VisualCache.from_index(tmp_path / "s.index", dim=16)
    assert cache.index.ntotal == 64 and cache.sources[5] == f"{tmp_path / 'feats.npy'}[5]"


def test_python_dash_m_demo_runs_the_same_command_line():
    # A fresh interpreter, as a user without the console script would run it.
    result = subprocess.run([sys.executable, "-m", "demo", "download", "--list", "--dest", "d"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "d/knn.index" in result.stdout


def test_every_top_level_module_is_installed():
    """`ibllm app` imports app.py and its neighbours from the installed package: each top-level
    module of the checkout must be declared, or the console script fails outside the checkout."""
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"])
    assert declared == {path.stem for path in ROOT.glob("*.py")}
