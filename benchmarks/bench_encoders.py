"""Encoder timings and memory on this machine (CPU, random weights, nothing downloaded).

    .venv/bin/python -m benchmarks.bench_encoders [--skip-huge] [--repeats 5]

Prints: per-modality encode time of the tiny encoder, FPS + kNN grouping time for one
8192-point cloud at the released sizes, one forward of an ImageBind-Huge-sized vision tower, and
ImageBind-Huge's parameter memory per tower in fp32 and fp16 (from parameter counts).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from demo.encoders.encoder import EncoderConfig, MultimodalEncoder
from demo.encoders.imagebind_import import import_imagebind_model
from demo.encoders.point_bind import PointBindConfig, PointBindEncoder, group_points

SAMPLES: dict[str, Callable[[], torch.Tensor]] = {
    "image": lambda: torch.randn(3, 224, 224),
    "video": lambda: torch.randn(15, 3, 2, 224, 224),
    "audio": lambda: torch.randn(3, 1, 128, 204),
    "text": lambda: torch.randint(0, 49408, (77,)),
    "point": lambda: torch.randn(8192, 3),
    "depth": lambda: torch.randn(1, 224, 224),
    "thermal": lambda: torch.randn(1, 224, 224),
    "imu": lambda: torch.randn(6, 2000),
}


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first-call allocations and lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_tiny(repeats: int) -> None:
    encoder = MultimodalEncoder.from_config("tiny", device="cpu")
    print("tiny encoder, one sample, CPU fp32 (median ms):")
    for modality, make in SAMPLES.items():
        x = make()
        print(f"  {modality:8s} {1e3 * median_seconds(lambda: encoder.encode(modality, x), repeats):8.1f}")


def bench_grouping(repeats: int) -> None:
    config = PointBindConfig.preset("huge")
    points = torch.randn(1, 8192, 3)
    seconds = median_seconds(lambda: group_points(points, config.num_group, config.group_size), repeats)
    print(f"FPS + kNN grouping, 8192 points -> {config.num_group} x {config.group_size}: {1e3 * seconds:.1f} ms")
    with torch.device("meta"):
        point_params = sum(p.numel() for p in PointBindEncoder(config).parameters())
    encoder = PointBindEncoder(config).eval()
    with torch.inference_mode():
        seconds = median_seconds(lambda: encoder(points), max(1, repeats // 2))
    print(f"Point-Bind encoder (released size, {point_params / 1e6:.1f} M params), 8192 points: {1e3 * seconds:.0f} ms")


def huge_parameter_memory() -> None:
    from accelerate import init_empty_weights

    with init_empty_weights():  # counts only
        model = import_imagebind_model().ImageBindModel(**EncoderConfig.preset("huge").imagebind)
    print("ImageBind-Huge parameters (GB = 1e9 bytes):")
    total = 0
    for key in model.modality_trunks:
        count = sum(
            p.numel()
            for part in ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors")
            for p in getattr(model, part)[key].parameters()
        )
        total += count
        print(f"  {key:8s} {count / 1e6:8.1f} M   fp32 {4 * count / 1e9:5.2f} GB   fp16 {2 * count / 1e9:5.2f} GB")
    print(f"  {'total':8s} {total / 1e6:8.1f} M   fp32 {4 * total / 1e9:5.2f} GB   fp16 {2 * total / 1e9:5.2f} GB")


def bench_huge_vision() -> None:
    """One image through a randomly initialised ImageBind-Huge vision tower (other towers unbuilt)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = import_imagebind_model().ImageBindModel(**EncoderConfig.preset("huge").imagebind)
    parts = [getattr(model, part)["vision"] for part in
             ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors")]
    for part in parts:
        part.to_empty(device="cpu")
        for p in part.parameters():
            torch.nn.init.normal_(p, std=0.02)  # any finite values: only the time matters
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        start = time.perf_counter()
        model({"vision": x})
        seconds = time.perf_counter() - start
    print(f"ImageBind-Huge vision tower, one 224x224 image, CPU fp32, {torch.get_num_threads()} threads: {seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-huge", action="store_true", help="skip the 2.5 GB Huge vision tower forward")
    args = parser.parse_args()
    bench_tiny(args.repeats)
    bench_grouping(args.repeats)
    huge_parameter_memory()
    if not args.skip_huge:
        bench_huge_vision()


if __name__ == "__main__":
    main()
