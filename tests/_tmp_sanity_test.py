import app, pytest
from test_app import *
def test_without_fix(tiny_pipeline, monkeypatch):
    monkeypatch.setattr(app, "on_one_thread", lambda make, stop_wait_s=0: make())
    with pytest.raises(AssertionError):
        test_the_library_stream_runs_on_one_thread_however_gradio_advances_it(tiny_pipeline)
