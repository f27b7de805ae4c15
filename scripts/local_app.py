"""Run `app.py` in a child process on a free loopback port, for tests and benchmarks.

    with LocalApp("--max-queue", "8") as server:
        Client(server.url).predict(...)
        print(server.rss() / 2**20, "MiB")

A separate process, unlike an in-process `demo.launch`, is the real `python app.py` (its argument
parsing, binding and launch settings), and its memory can be measured apart from the client's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:  # the port may be taken again before the app binds it: rare, fine here
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalApp:
    def __init__(self, *args: str, startup_s: float = 180.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = ["--port", str(self.port), *args]
        self.startup_s = startup_s
        self.process: subprocess.Popen | None = None
        # A file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
        self.log = tempfile.NamedTemporaryFile("w+", prefix="ibllm-app-", suffix=".log", delete=False)

    def __enter__(self) -> "LocalApp":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("SPACE_ID", None)  # on Spaces the app binds 0.0.0.0
        self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *self.args], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "gradio_api/info", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"app.py did not answer within {self.startup_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss(self) -> int:
        """Resident memory of the server process, bytes."""
        return psutil.Process(self.process.pid).memory_info().rss

    def listening(self) -> list[tuple[str, int]]:
        """(address, port) of the server's listening sockets."""
        connections = psutil.Process(self.process.pid).net_connections(kind="inet")
        return sorted((c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN)

    def log_tail(self, chars: int = 4000) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-chars:]
