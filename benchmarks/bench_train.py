"""Training speed on CPU, and what the feature cache saves. Prints numbers; asserts nothing.

    python -m benchmarks.bench_train                 # tiny preset + medium random config
    python -m benchmarks.bench_train --sizes tiny    # tiny only (seconds)
    python -m benchmarks.bench_train --huge          # + one image through a random ImageBind-Huge vision tower

1. Feature extraction: images per second (load + preprocess + encode), tiny ImageBind.
2. Stage-1 optimizer steps per second with cached features vs encoding the batch's images at
   every step (the same trainer, only the feature source differs), and the ratio.
3. With --huge: the per-image cost of the real encoder on this CPU (what each sample would pay
   at every step of every epoch without the cache), and the speed-up it implies per size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

SIZES = {
    "tiny": None,  # demo.tiny's own params
    "medium": ({"dim": 1024, "multiple_of": 256, "n_heads": 16, "n_layers": 8, "norm_eps": 1e-5, "vocab_size": -1}, 32000),
}


def make_caption_set(root: Path, count: int) -> Path:
    """`count` random-noise 320x240 JPEGs (realistic decode cost) and a captions.csv."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["image,caption"]
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg", quality=90)
        lines.append(f"images/{i}.jpg,picture number {i} with some noise in it")
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    return root / "captions.csv"


class EncodeEveryStep:
    """A FeatureStore stand-in that loads and encodes each requested image on every call."""

    def __init__(self, encoder):
        self.encoder = encoder

    def get(self, keys: list[str]) -> torch.Tensor:
        from torch.nn import functional as F

        from demo.inputs.registry import load_input
        from demo.train.features import BLANK

        batch = torch.stack([torch.zeros(3, 224, 224) if k == BLANK else load_input("image", k) for k in keys])
        return F.normalize(self.encoder.encode_batch("image", batch), dim=-1)  # (B, E)


def time_training(release, samples, features, steps: int, batch: int, out: Path) -> float:
    """Optimizer steps per second of stage 1, from the end of the first step (warm-up: lazy
    imports and first-call kernel setup) to the end of the last."""
    from demo.convert import MetaCheckpoint, open_base
    from demo.train.adapter_model import AdapterModel
    from demo.train.trainer import TrainConfig, train

    model = AdapterModel.from_base(open_base(release.llama_dir), 1024, delta=MetaCheckpoint(release.delta_dir))
    config = TrainConfig("stage1", batch_size=batch, max_steps=steps, lr=1e-3, save_every=10**9, progress=False)
    ends: list[float] = []
    train(model, samples, features, config, out, on_step=lambda step, loss: ends.append(time.perf_counter()))
    return (steps - 1) / (ends[-1] - ends[0])


def bench_size(size: str, root: Path, images: int, steps: int, batch: int, huge_s: float | None) -> None:
    from transformers import LlamaTokenizer

    from demo.encoders.encoder import MultimodalEncoder
    from demo.tiny import write_tiny_release
    from demo.train.data import IssueLog, read_captions, tokenize_all
    from demo.train.features import extract_features

    params, vocab = SIZES[size] or (None, 512)
    release = write_tiny_release(root / f"release-{size}", with_encoder=True, params=params, vocab_size=vocab)
    captions = make_caption_set(root / "data", images)
    issues = IssueLog("error")
    records = read_captions(captions, issues)
    tokenizer = LlamaTokenizer.from_pretrained(str(release.root), vocab_file=str(release.tokenizer))
    samples = tokenize_all(records, tokenizer, 128, issues)
    encoder = MultimodalEncoder.from_pretrained(release.imagebind, device="cpu")
    encoder.encode("image", torch.zeros(3, 224, 224))  # warm-up, outside the timings

    start = time.perf_counter()
    store = extract_features({str(r.image): r.where for r in records}, encoder, root / f"features-{size}", issues, progress=False)
    extract_s = time.perf_counter() - start
    time_training(release, samples, store, 2, batch, root / f"warm-up-{size}")  # first-run costs, untimed
    rates: dict[str, list[float]] = {"cached": [], "every": []}
    for round_ in range(2):  # alternate the two, best of two each: the machine may be shared
        for mode, features in (("cached", store), ("every", EncodeEveryStep(encoder))):
            rates[mode].append(time_training(release, samples, features, steps, batch, root / f"run-{mode}-{size}-{round_}"))
    cached, every = max(rates["cached"]), max(rates["every"])
    print(f"{size:>6}: features {len(records) / extract_s:6.1f} img/s | stage-1 steps/s (batch {batch}): "
          f"cached {cached:6.2f}, encode every step {every:6.2f}, speed-up x{cached / every:.1f}")
    if huge_s is not None:  # the real encoder's cost added to each step: 1 / cached + batch x huge_s
        print(f"{'':>8}with ImageBind-Huge ({huge_s:.2f} s/img here): encode every step {1 / (1 / cached + batch * huge_s):.3f} "
              f"steps/s, speed-up of the cache x{(1 / cached + batch * huge_s) * cached:.0f}")


def bench_huge_image() -> float:
    """Seconds per image through ImageBind-Huge's vision tower (random weights, fp32, this CPU)."""
    from demo.encoders.encoder import IMAGEBIND_PRESETS
    from demo.encoders.imagebind_import import import_imagebind_model

    model = import_imagebind_model().ImageBindModel(**IMAGEBIND_PRESETS["huge"]).eval()
    image = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        model({"vision": image})  # warm-up
        start = time.perf_counter()
        model({"vision": image})
        seconds = time.perf_counter() - start
    print(f"ImageBind-Huge vision tower, CPU fp32, {torch.get_num_threads()} threads: {seconds:.2f} s per image")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["tiny", "medium"])
    parser.add_argument("--images", type=int, default=32, help="caption-set size (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per timing (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=4, help="samples per step (default: %(default)s)")
    parser.add_argument("--huge", action="store_true", help="also time one image through ImageBind-Huge's vision tower")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    huge_s = bench_huge_image() if args.huge else None
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            bench_size(size, Path(tmp), args.images, args.steps, args.batch, huge_s)


if __name__ == "__main__":
    main()
