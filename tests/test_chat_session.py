"""demo.chat_session: a session's mix and its conversation as messages (no UI toolkit)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from demo.chat_session import (clamp_weight, conversation_markdown, delete_owned, describe_mix, history_pairs,
                               mix_key, new_input, run_with_progress, shares)
from demo.errors import InputError
from demo.inputs.limits import InputLimits

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_inputs_weights_and_shares(tmp_path):
    image = new_input(EXAMPLES / "chelsea.png")
    sound = new_input(EXAMPLES / "speech.wav", weight=-0.5)
    assert (image.modality, sound.modality, image.name) == ("image", "audio", "chelsea.png")
    assert shares([image, sound]) == ["+67%", "-33%"]
    assert "share -33%" in describe_mix([image, sound])[1]
    assert clamp_weight(7) == 1.0 and clamp_weight(-3) == -1.0
    for junk in (float("nan"), "x", None):
        with pytest.raises(InputError):
            clamp_weight(junk)
    sound.weight = 0
    image.weight = 0
    assert shares([image, sound]) == ["—", "—"]
    assert mix_key([image], None) != mix_key([sound], None)


def test_a_point_cloud_gets_a_preview_the_session_owns(tmp_path):
    entry = new_input(EXAMPLES / "mug.ply", work_dir=tmp_path)
    assert entry.preview and Path(entry.preview).read_bytes().startswith(b"ply\n") and entry.owned == [entry.preview]
    delete_owned([entry])
    assert not Path(entry.preview).exists()
    with pytest.raises(InputError):  # the library's limits apply to previews too
        new_input(EXAMPLES / "mug.ply", limits=InputLimits(point_max_count=10), work_dir=tmp_path)


def test_history_skips_notes_and_reads_parts():
    chat = [{"role": "user", "content": [{"type": "text", "text": "q1"}, {"type": "file", "file": {"path": "/x/a.png"}}]},
            {"role": "assistant", "content": "🎛️ a.png", "metadata": {"title": "Mix: 1 input"}},
            {"role": "assistant", "content": [{"type": "text", "text": "a1"}]},
            {"role": "user", "content": "q2"}]
    assert history_pairs(chat) == [("q1", "a1")]
    text = conversation_markdown(chat, None).read_text()
    assert "**You:** q1" in text and "attached: `a.png`" in text and "_Mix: 1 input_" in text and "a1" in text


def test_work_in_the_background_reports_progress_and_its_result():
    release = threading.Event()

    def slow():
        release.wait(5)
        return 42

    task = run_with_progress(slow, interval=0.01)
    assert next(task) >= 0  # still running: progress
    release.set()
    with pytest.raises(StopIteration) as done:
        while True:
            next(task)
    assert done.value.value == 42
    with pytest.raises(ZeroDivisionError):
        list(run_with_progress(lambda: 1 / 0))


def test_preview_subsamples_large_clouds(tmp_path):
    from demo.inputs.preview import point_cloud_preview

    np.save(tmp_path / "cloud.npy", np.random.default_rng(0).normal(size=(3000, 3)).astype(np.float32))
    out = point_cloud_preview(tmp_path / "cloud.npy", max_points=500, directory=tmp_path)
    assert b"element vertex 500" in out.read_bytes()[:200]
    (tmp_path / "bad.npy").write_bytes(b"nope")
    with pytest.raises(InputError):
        point_cloud_preview(tmp_path / "bad.npy", directory=tmp_path)
