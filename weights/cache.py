"""Make visual cache files: build one from images or embeddings, or compact one to save RAM.

    python -m weights.cache build --images photos/ --encoder-weights imagebind_huge.pth -o my.index
    python -m weights.cache build --embeddings feats_000.npy feats_001.npy --sources urls.txt -o my.index
    python -m weights.cache compact knn.index knn-compact.index

`build` writes a flat inner-product index of unit vectors and `<output>.sources.jsonl` (where each
entry came from). It checkpoints as it goes: run the same command again to resume (an unreadable
image stops the build and is named: move it away, then resume; new images may be added). `compact`
re-encodes a cache (the official 13.3 GB knn.index included) as 7-bit codes found through an IVF
index by default: under a quarter of the RAM, same entry ids (benchmarks/bench_cache.py measures
the trade-offs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: python weights/cache.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.cache import CODECS, EMBED_DIM, build_from_embeddings, build_from_images, compact_index
from demo.errors import DemoError
from demo.modalities import get_modality


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m weights.cache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build a cache from a folder of images or from .npy embedding files")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, metavar="DIR", help="folder searched recursively for images (sorted order)")
    source.add_argument("--embeddings", type=Path, nargs="+", metavar="NPY", help=".npy files of [n, D] or [D] embeddings, read in the order given")
    build.add_argument("-o", "--output", type=Path, required=True, help="index file to write; the sources go to OUTPUT.sources.jsonl")
    build.add_argument("--sources", type=Path, metavar="TXT", help="with --embeddings: one source (URL or caption) a line, a line per row")
    build.add_argument("--encoder-weights", type=Path, metavar="PTH", help="with --images: ImageBind weights for demo's MultimodalEncoder")
    build.add_argument("--device", default=None, help="with --images: torch device for the encoder (default: cuda if available)")
    build.add_argument("--dim", type=int, default=EMBED_DIM, help=f"embedding size (default {EMBED_DIM}, ImageBind-Huge)")
    build.add_argument("--batch-size", type=int, default=None, help="entries encoded or copied at a time (default 32 images, 4096 rows)")
    build.add_argument("--checkpoint-every", type=int, default=None, help="entries between checkpoints (default 1024 images, 65536 rows)")
    build.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    shrink = commands.add_parser("compact", help="re-encode a cache as a compact IVF index (same ids, sidecar copied)")
    shrink.add_argument("source", type=Path, help="the cache index to read (mapped from disk, not loaded into RAM)")
    shrink.add_argument("output", type=Path, help="the compact index to write")
    shrink.add_argument(
        "--codec", choices=list(CODECS), default="SQ8",
        help="vector codes: SQ8 (default: 8 bits a dimension, 0.253x fp32 RAM), SQ7 (0.238x; weaker for queries far "
             "from every entry, e.g. audio/text against images), SQ6 (0.19x, lower recall), SQ4, fp16",
    )
    shrink.add_argument("--nlist", type=int, default=None, help="IVF lists (default: sqrt(n) as a power of two)")
    shrink.add_argument("--nprobe", type=int, default=32, help="lists searched per query, saved in the file (default 32)")
    shrink.add_argument("--k-factor", type=int, default=32, help="SQ7: candidates re-scored per neighbour asked for, saved in the file (default 32)")
    shrink.add_argument("--train-size", type=int, default=None, help="vectors to train the lists on (default 39 * nlist)")
    shrink.add_argument("--dim", type=int, default=EMBED_DIM, help=f"embedding size (default {EMBED_DIM})")
    shrink.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def find_images(folder: Path) -> list[Path]:
    suffixes = get_modality("image").suffixes
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def imagebind_encoder(weights: Path, device: str | None) -> Callable[[list[str]], np.ndarray]:
    """The library's image path as an `encode_images` callable: load and preprocess, then encode."""
    import torch

    from demo.encoders.encoder import MultimodalEncoder
    from demo.inputs.image import load_image
    from demo.inputs.limits import InputLimits

    encoder = MultimodalEncoder.from_pretrained(weights, device=device)
    limits = InputLimits()

    def encode_images(paths: list[str]) -> np.ndarray:
        pixels = torch.stack([load_image(path, limits) for path in paths])  # [n, 3, 224, 224]
        return encoder.encode_batch("image", pixels, batch_size=len(paths)).numpy()  # [n, D]

    return encode_images


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except DemoError as error:  # bad inputs or files: the message says what to do, no traceback
        sys.exit(f"error: {error}")


def run(args: argparse.Namespace) -> None:
    progress = not args.no_progress
    if args.command == "compact":
        options = dict(codec=args.codec, nlist=args.nlist, nprobe=args.nprobe, train_size=args.train_size, k_factor=args.k_factor)
        out = compact_index(args.source, args.output, dim=args.dim, progress=progress, **options)
    elif args.images is not None:
        if args.encoder_weights is None:
            sys.exit("build --images needs --encoder-weights (ImageBind-Huge: see README, Weights)")
        images = find_images(args.images)
        print(f"{len(images)} images under {args.images}")
        sizes = dict(batch_size=args.batch_size or 32, checkpoint_every=args.checkpoint_every or 1024)
        out = build_from_images(images, imagebind_encoder(args.encoder_weights, args.device), args.output, dim=args.dim, progress=progress, **sizes)
    else:
        sources = args.sources.read_text(encoding="utf-8").splitlines() if args.sources else None
        sizes = dict(batch_size=args.batch_size or 4096, checkpoint_every=args.checkpoint_every or 65536)
        out = build_from_embeddings(args.embeddings, args.output, sources=sources, dim=args.dim, progress=progress, **sizes)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
