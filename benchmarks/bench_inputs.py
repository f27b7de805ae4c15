"""Preprocessing time per modality on the example files, and point-cloud reduction time.

    .venv/bin/python -m benchmarks.bench_inputs

Each number is the median of several runs after one warm-up (which pays imports and caches).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from demo.inputs import load_input

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = ROOT / "examples"
CASES = [
    ("image", "chelsea.png"),
    ("image", "rocket.jpg"),
    ("video", "video.mp4"),
    ("audio", "speech.wav"),
    ("audio", "trash-empty.ogg"),
    ("text", "caption.txt"),
    ("point", "mug.ply"),
    ("depth", "depth.png"),
    ("thermal", "thermal.png"),
    ("imu", "walking_imu.csv"),
    ("embedding", "embedding.npy"),
]


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: imports, tokenizer cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'modality':<10} {'file':<18} {'ms':>9}")
    for modality, name in CASES:
        seconds = median_seconds(lambda: load_input(modality, EXAMPLES / name), repeats=5)
        print(f"{modality:<10} {name:<18} {seconds * 1000:9.1f}")

    print(f"\n{'points in':>10} {'to 8192 (s)':>12}")
    rng = np.random.default_rng(0)
    for count in (10**4, 10**5, 10**6):
        cloud = rng.normal(size=(count, 3)).astype(np.float32)
        seconds = median_seconds(lambda: load_input("point", cloud), repeats=3)
        print(f"{count:>10} {seconds:12.3f}")


if __name__ == "__main__":
    main()
