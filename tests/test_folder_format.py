"""The converted folder's format: one module that the converter writes by and the loader reads by."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from demo.folder_format import ADAPTER_NAME, CONFIG_NAME, FORMAT_VERSION, LLM_DIR, SENTENCEPIECE_NAME

ROOT = Path(__file__).resolve().parents[1]


def test_converted_folder_has_the_named_files(tiny_converted):
    meta = json.loads((tiny_converted / CONFIG_NAME).read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["llm"] == LLM_DIR and meta["adapter"] == ADAPTER_NAME
    assert (tiny_converted / ADAPTER_NAME).is_file() and (tiny_converted / LLM_DIR / SENTENCEPIECE_NAME).is_file()


def test_loading_does_not_import_the_converter():
    # Run time (demo.model) reads the format from its own small module, not from the 650-line converter.
    code = "import sys, demo.model\nassert 'demo.convert' not in sys.modules, 'demo.model imports demo.convert'\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
