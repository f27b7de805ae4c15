"""`load_test.py --openai`: N concurrent `openai` clients against `python -m demo.serve` on loopback.

    .venv/bin/python -m benchmarks.load_test --openai --users 8 --requests 64
    .venv/bin/python -m benchmarks.load_test --openai --ray-replicas 1    # then 2: Ray Serve on CPU

Starts the server itself (tiny preset, a free 127.0.0.1 port), warms it, then sends a fixed number
of streamed chat requests (text-only, image, audio in turn) from N threads. Counts completed,
refused (HTTP 503: the queue is full) and failed requests; prints p50/p95 time to first token and
to the last, aggregate tokens/s (completion tokens of completed requests / wall time), and the
server's resident memory (its process tree: Ray's replicas included) at start and after.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def _parts() -> list[list]:
    image = base64.b64encode((ROOT / "examples" / "chelsea.png").read_bytes()).decode()
    audio = base64.b64encode((ROOT / "examples" / "speech.wav").read_bytes()).decode()
    return [[], [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}],
            [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]]


def _tree_rss(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total / MiB


def run(args) -> int:
    import openai

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "demo.serve", "--weights", "tiny", "--port", str(port), "--concurrency", str(args.concurrency),
               "--max-waiting", str(args.max_queue)]
    if args.ray_replicas:
        command += ["--ray", "--replicas", str(args.ray_replicas)]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                model = client.models.list().data[0].id
                break
            except openai.APIError:
                if time.monotonic() > deadline or server.poll() is not None:
                    print("the server did not start")
                    return 1
                time.sleep(1)
        parts = _parts()
        for extra in parts * max(1, args.ray_replicas):  # warm every replica's encoders
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": [{"type": "text", "text": "Warm up."}, *extra]}],
                                           max_tokens=2)
        rss_start = _tree_rss(server.pid)
        lock = threading.Lock()
        sent = 0
        outcomes = {"completed": 0, "refused": 0, "failed": 0}
        first_times, last_times, tokens = [], [], 0

        def user() -> None:
            nonlocal sent, tokens
            while True:
                with lock:
                    if sent >= args.requests:
                        return
                    index, sent = sent, sent + 1
                messages = [{"role": "user", "content": [{"type": "text", "text": f"Describe it ({index})."}, *parts[index % 3]]}]
                began = time.perf_counter()
                first = None
                try:
                    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=args.tokens, stream=True,
                                                            stream_options={"include_usage": True}, temperature=0.8, seed=index)
                    used = 0
                    for chunk in stream:
                        if first is None and chunk.choices and chunk.choices[0].delta.content:
                            first = time.perf_counter() - began
                        if chunk.usage is not None:
                            used = chunk.usage.completion_tokens
                    with lock:
                        outcomes["completed"] += 1
                        first_times.append(first if first is not None else time.perf_counter() - began)
                        last_times.append(time.perf_counter() - began)
                        tokens += used
                except openai.APIStatusError as exc:
                    with lock:
                        outcomes["refused" if exc.status_code == 503 else "failed"] += 1
                except Exception:
                    with lock:
                        outcomes["failed"] += 1

        began = time.perf_counter()
        threads = [threading.Thread(target=user) for _ in range(args.users)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        rss_end = _tree_rss(server.pid)
        kind = f"Ray Serve, {args.ray_replicas} replica(s)" if args.ray_replicas else "uvicorn, one process"
        print(f"OpenAI API ({kind}), tiny preset, {args.users} users, {args.requests} requests of {args.tokens} tokens, "
              f"engine rows {args.concurrency}, queue {args.max_queue}")
        print("outcomes:", outcomes)
        if first_times:
            p = lambda values, q: np.percentile(values, q)  # noqa: E731
            print(f"time to first token: p50 {p(first_times, 50):.3f} s, p95 {p(first_times, 95):.3f} s")
            print(f"time to last token:  p50 {p(last_times, 50):.3f} s, p95 {p(last_times, 95):.3f} s")
        print(f"aggregate: {tokens} tokens in {wall:.1f} s = {tokens / wall:.1f} tokens/s")
        print(f"server RSS (process tree): {rss_start:.0f} MiB at start, {rss_end:.0f} MiB after")
        return 1 if outcomes["failed"] else 0
    finally:
        os.killpg(server.pid, 15)  # the server and, with --ray, the Ray processes it started
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
