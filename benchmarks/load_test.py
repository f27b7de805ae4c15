"""Load test: N concurrent gradio_client users against `python app.py` (tiny preset) on loopback.

    .venv/bin/python -m benchmarks.load_test                          # 8 users, 200 requests
    .venv/bin/python -m benchmarks.load_test --users 16 --max-queue 4 --requests 200
    .venv/bin/python -m benchmarks.load_test --attack                 # bad-input corpus + attacks
    .venv/bin/python -m benchmarks.load_test --openai [--ray-replicas N]  # the OpenAI API (openai_load.py)

Starts its own server on a free 127.0.0.1 port (nothing else is contacted) with the app's bounded
queue, and sends a fixed number of /chat requests (text-only, image, audio in turn) from N
threads, each its own client and session. Every request must either complete or be turned away
cleanly by the queue ("Queue is full"); anything else is counted as a failure. Prints latency
percentiles of completed requests, the server's resident memory every 20 requests, and whether
memory grew from the first half of the run to the second. Bounded in count (--requests) and in
time (--max-seconds); prints numbers and exits 1 only if a request failed or the server died.

--attack measures the per-request budget (issue 12) instead, on the same kind of server:
1. memory: the server's RSS when warm, then after the whole bad-input corpus
   (scripts/bad_inputs.py) sent one file at a time (goal: back within 100 MB of the warm level);
2. waiting: one user asks normal questions (an image) back to back while an attacker sends the
   corpus's hostile files (tiny files that cost gigabytes or minutes without the budget) and a
   history of 8,000 one-letter turns; prints the worst time the user's request took, next to the
   time the same request takes alone (goal: at most that plus 2 s).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

from scripts.local_app import LocalApp

ROOT = Path(__file__).resolve().parents[1]

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
    parser.add_argument("--attack", action="store_true", help="measure the per-request budget (see above)")
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/bad_inputs_corpus"),
                        help="where --attack writes the bad-input corpus (default: %(default)s)")
    parser.add_argument("--openai", action="store_true",
                        help="drive `python -m demo.serve` with the openai client instead (benchmarks/openai_load.py)")
    parser.add_argument("--ray-replicas", type=int, default=0, help="with --openai: serve through Ray Serve with N replicas")
    args = parser.parse_args(argv)
    if args.attack:
        return attack(args)
    if args.openai:
        from openai_load import run

        return run(args)

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


def attack(args: argparse.Namespace) -> int:
    """The --attack measurement (module docstring): memory after the corpus, worst wait under attack."""
    import bad_inputs
    from gradio_client import Client, handle_file

    cases = bad_inputs.generate(args.corpus)
    hostile = [case for case in cases if case.hostile]
    image = [handle_file(str(ROOT / "examples" / "chelsea.png"))]
    settings = {"max_new_tokens": args.tokens, "temperature": 0.0}

    def normal_request(client: Client) -> float:
        start = time.monotonic()
        client.predict("What is in the picture?", image, ["image"], None, [], settings, api_name="/chat")
        return time.monotonic() - start

    with LocalApp("--max-file-size", "200mb", "--concurrency", str(args.concurrency),
                  "--max-queue", str(args.max_queue)) as server:
        client = Client(server.url, verbose=False)
        # Warm: every decoder and tower used by the usable corpus files is loaded once.
        bad_inputs.run_app(server.url, [case for case in cases if case.expect == "answer"])
        warm_rss = server.rss() / MiB
        alone = sorted(normal_request(client) for _ in range(5))[2]  # median of 5, nobody else
        started = time.monotonic()
        outcomes = bad_inputs.run_app(server.url, cases)
        corpus_s = time.monotonic() - started
        after_rss = server.rss() / MiB
        problems = [f"{o.case.name}: {p}" for o in outcomes for p in o.problems()]

        # The waiting measurement: a victim thread asks, an attacker sends the hostile files.
        waits: list[float] = []
        attacking = threading.Event()
        attacking.set()

        def victim() -> None:
            own = Client(server.url, verbose=False)
            while attacking.is_set():
                waits.append(normal_request(own))
            own.close()

        thread = threading.Thread(target=victim, daemon=True)
        thread.start()
        time.sleep(alone)  # the victim is being served when the attack starts
        attack_started = time.monotonic()
        attack_outcomes = bad_inputs.run_app(server.url, hostile)
        history = [["a", "b"]] * 8000  # within the character budget without its template
        start = time.monotonic()
        try:
            client.predict("And now?", [], [], None, history, settings, api_name="/chat")
            history_outcome = "answered"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            history_outcome = f"{type(exc).__name__}: {str(exc)[:80]}"
        history_s = time.monotonic() - start
        attack_s = time.monotonic() - attack_started
        attacking.clear()
        thread.join(timeout=120)
        final_rss = server.rss() / MiB
        alive = server.alive
        client.close()

    worst = max(waits) if waits else float("nan")
    import os

    print(f"machine: {os.cpu_count()} CPU cores, no GPU; app: tiny preset, --concurrency "
          f"{args.concurrency}, max_new_tokens {args.tokens}")
    print(f"corpus: {len(cases)} files sent one at a time in {corpus_s:.0f} s; problems: {len(problems)}")
    for problem in problems[:20]:
        print("  PROBLEM", problem)
    print(f"server RSS: warm {warm_rss:.0f} MiB, after the corpus {after_rss:.0f} MiB "
          f"({after_rss - warm_rss:+.0f} MiB; goal: within +100), after the attack {final_rss:.0f} MiB")
    print(f"attack: {len(hostile)} hostile files in {sum(o.seconds for o in attack_outcomes):.1f} s "
          f"(slowest {max(o.seconds for o in attack_outcomes):.2f} s: "
          f"{max(attack_outcomes, key=lambda o: o.seconds).case.name}); 8,000-turn history: "
          f"{history_outcome} in {history_s:.2f} s; attack lasted {attack_s:.1f} s")
    print(f"normal request (an image): {alone:.2f} s alone; during the attack {len(waits)} requests, "
          f"worst {worst:.2f} s (goal: at most {alone + 2:.2f} s)")
    print("server alive:", alive)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
