"""Load test: N concurrent gradio_client users against `python app.py` (tiny preset) on loopback.

    .venv/bin/python benchmarks/load_test.py                          # 8 users, 200 requests
    .venv/bin/python benchmarks/load_test.py --users 16 --max-queue 4 --requests 200

Starts its own server on a free 127.0.0.1 port (nothing else is contacted) with the app's bounded
queue, and sends a fixed number of /chat requests (text-only, image, audio in turn) from N
threads, each its own client and session. Every request must either complete or be turned away
cleanly by the queue ("Queue is full"); anything else is counted as a failure. Prints latency
percentiles of completed requests, the server's resident memory every 20 requests, and whether
memory grew from the first half of the run to the second. Bounded in count (--requests) and in
time (--max-seconds); prints numbers and exits 1 only if a request failed or the server died.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from local_app import LocalApp  # noqa: E402

MiB = 2**20
INPUTS = [([], []), ([ROOT / "examples" / "chelsea.png"], ["image"]), ([ROOT / "examples" / "speech.wav"], ["audio"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=200, help="requests in all (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=16, help="max_new_tokens per answer (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=1, help="the app's --concurrency (default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=32, help="the app's --max-queue (default: %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=480, help="stop sending after this (default: %(default)s)")
    parser.add_argument("--sample-every", type=int, default=20, help="RSS sample period, in requests")
    args = parser.parse_args(argv)

    from gradio_client import Client, handle_file

    lock = threading.Lock()
    sent = 0
    latencies: list[float] = []
    outcomes = {"completed": 0, "queue full": 0, "failed": 0}
    failures: list[str] = []
    rss_series: list[tuple[int, float]] = []

    with LocalApp("--concurrency", str(args.concurrency), "--max-queue", str(args.max_queue)) as server:
        # One request first, so that the ImageBind towers are loaded before the baseline.
        warm = Client(server.url, verbose=False)
        for files, modalities in INPUTS:
            warm.predict("Warm up.", [handle_file(str(f)) for f in files], modalities, None, [],
                         {"max_new_tokens": args.tokens}, api_name="/chat")
        warm.close()
        rss_series.append((0, server.rss() / MiB))
        deadline = time.monotonic() + args.max_seconds

        def user(index: int) -> None:
            nonlocal sent
            client = Client(server.url, verbose=False)
            try:
                while time.monotonic() < deadline:
                    with lock:
                        if sent >= args.requests:
                            return
                        sent += 1
                        number = sent
                    files, modalities = INPUTS[number % len(INPUTS)]
                    start = time.monotonic()
                    try:
                        job = client.submit(f"Question {number} from user {index}?",
                                            [handle_file(str(f)) for f in files], modalities, None, [],
                                            {"max_new_tokens": args.tokens, "temperature": 0.0}, api_name="/chat")
                        job.result(timeout=120)
                        outcome = "completed"
                    except Exception as exc:  # noqa: BLE001 - classified below, never raised
                        full = "queue is full" in str(exc).lower()
                        outcome = "queue full" if full else "failed"
                        if not full:
                            failures.append(f"request {number}: {type(exc).__name__}: {exc}"[:300])
                    with lock:
                        outcomes[outcome] += 1
                        if outcome == "completed":
                            latencies.append(time.monotonic() - start)
                        done = sum(outcomes.values())
                        if done % args.sample_every == 0:
                            rss_series.append((done, server.rss() / MiB))
            finally:
                client.close()

        started = time.monotonic()
        threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(args.users)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0) + 150)
        elapsed = time.monotonic() - started
        alive = server.alive
        final_rss = server.rss() / MiB if alive else float("nan")

    print(f"users {args.users}, requests {sum(outcomes.values())}/{args.requests}, max_new_tokens {args.tokens}, "
          f"--concurrency {args.concurrency} --max-queue {args.max_queue}, {elapsed:.0f} s")
    print("outcomes:", ", ".join(f"{k} {v}" for k, v in outcomes.items()))
    if latencies:
        p50, p95 = np.percentile(latencies, [50, 95])
        print(f"latency of completed requests: p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(latencies):.2f} s; "
              f"throughput {outcomes['completed'] / elapsed:.2f} answers/s")
    print("server RSS (MiB) by requests done:", ", ".join(f"{n}: {r:.0f}" for n, r in rss_series))
    half = len(rss_series) // 2
    if half:
        first, second = np.mean([r for _, r in rss_series[1:half + 1]]), np.mean([r for _, r in rss_series[half + 1:]])
        print(f"RSS before {rss_series[0][1]:.0f} MiB, after {final_rss:.0f} MiB; mean of the first half "
              f"{first:.0f} MiB, of the second half {second:.0f} MiB (growth {second - first:+.0f} MiB)")
    for failure in failures[:10]:
        print("FAILED", failure)
    print("server alive:", alive)
    return 0 if alive and not outcomes["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
