"""Make visual cache files: build one from images or embeddings, or compact one to save RAM.

    ibllm cache build --images photos/ --encoder-weights imagebind_huge.pth -o my.index
    ibllm cache build --embeddings feats_000.npy feats_001.npy --sources urls.txt -o my.index
    ibllm cache compact knn.index knn-compact.index

`build` writes a flat inner-product index of unit vectors and `<output>.sources.jsonl` (where each
entry came from). It checkpoints as it goes: run the same command again to resume (an unreadable
image stops the build and is named: move it away, then resume; new images may be added). `compact`
re-encodes a cache (the official 13.3 GB knn.index included) as 8-bit codes found through an IVF
index by default: about a quarter of the RAM, same entry ids (benchmarks/bench_cache.py measures
the trade-offs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from ..cache import EMBED_DIM, VisualCache, sources_path
from ..errors import DemoError, InputError
from ..modalities import get_modality

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Building a cache


def build_from_embeddings(
    files: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    sources: Sequence[str | None] | None = None,
    dim: int = EMBED_DIM,
    batch_size: int = 4096,
    checkpoint_every: int = 65536,
    progress: bool = True,
) -> Path:
    """Build a flat cache from .npy files of embeddings ([n, D] or [D] each), in file order.

    `sources` gives one source per row (URL or caption); without it a row's source is `file.npy[row]`.
    """
    arrays = [_load_npy(f) for f in files]
    for f, array in zip(files, arrays):
        if array.ndim not in (1, 2) or array.shape[-1] != dim:
            raise InputError(f"{f}: expected embeddings of shape [n, {dim}] or [{dim}], got {array.shape}")
    arrays = [a.reshape(-1, dim) for a in arrays]
    names = [f"{f}[{row}]" for f, a in zip(files, arrays) for row in range(len(a))]
    if sources is not None and len(sources) != len(names):
        raise InputError(f"{len(sources)} sources were given for {len(names)} embedding rows")
    starts = np.cumsum([0] + [len(a) for a in arrays])  # [F + 1] first row of each file

    def read(start: int, stop: int) -> np.ndarray:
        parts = [  # the slices of rows [start, stop) that fall in each file
            a[max(start, lo) - lo : min(stop, hi) - lo] for a, lo, hi in zip(arrays, starts[:-1], starts[1:]) if max(start, lo) < min(stop, hi)
        ]
        return np.concatenate(parts)  # [stop - start, D]

    return _build(read, names if sources is None else list(sources), output, dim=dim, batch_size=batch_size, checkpoint_every=checkpoint_every, progress=progress)


def _load_npy(path: str | os.PathLike) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")  # mapped: only the rows being copied are read
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read it as a .npy array ({error})") from None


def build_from_images(
    paths: Sequence[str | os.PathLike],
    encode_images: Callable[[list[str]], np.ndarray],
    output: str | os.PathLike,
    *,
    dim: int = EMBED_DIM,
    batch_size: int = 32,
    checkpoint_every: int = 1024,
    progress: bool = True,
) -> Path:
    """Build a flat cache from images; `encode_images(paths) -> [n, D]` is the image encoder."""
    paths = [str(p) for p in paths]
    return _build(lambda start, stop: np.asarray(encode_images(paths[start:stop])), paths, output, dim=dim, batch_size=batch_size, checkpoint_every=checkpoint_every, progress=progress)


def _build(
    read: Callable[[int, int], np.ndarray],
    sources: Sequence[str | None],
    output: str | os.PathLike,
    *,
    dim: int,
    batch_size: int,
    checkpoint_every: int,
    progress: bool,
) -> Path:
    """Write entries `read(start, stop) -> [n, D]` with their `sources`, resuming from the last checkpoint.

    Work in progress lives in `<output>.partial.f32` (raw rows) and `<output>.partial.jsonl`
    (sources). Both are append-only and written in the same order, so after a crash the entries
    present in both are complete. A run resumes when those entries' sources are the start of its
    own: images can be added to the end of the list, or one that failed can be moved away.
    """
    total = len(sources)
    if total == 0:
        raise InputError("nothing to build the cache from: no images or embedding rows were given")
    output = Path(output)
    rows_path, sources_tmp = output.with_name(output.name + ".partial.f32"), output.with_name(output.name + ".partial.jsonl")
    done = _resume(rows_path, sources_tmp, sources, dim)

    bar = tqdm(total=total, initial=done, desc="building cache", unit="entry", disable=not progress)
    with bar, open(rows_path, "ab") as rows_file, open(sources_tmp, "a", encoding="utf-8") as sources_file:
        since_checkpoint = 0
        for start in range(done, total, batch_size):
            stop = min(start + batch_size, total)
            rows_file.write(_unit_rows(read(start, stop), stop - start, dim, start).tobytes())
            sources_file.writelines(json.dumps({"source": name}) + "\n" for name in sources[start:stop])
            since_checkpoint += stop - start
            bar.update(stop - start)
            if since_checkpoint >= checkpoint_every:
                _sync(rows_file, sources_file)
                since_checkpoint = 0
        _sync(rows_file, sources_file)

    # Finish: one flat inner-product index (exact; shrink it with `compact_index`), then the sidecar.
    index = faiss.IndexFlatIP(dim)
    index.add(np.fromfile(rows_path, dtype=np.float32).reshape(total, dim))  # [total, D]
    tmp = output.with_name(output.name + ".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, output)
    os.replace(sources_tmp, sources_path(output))
    rows_path.unlink()
    return output


def _unit_rows(vectors: np.ndarray, expected: int, dim: int, start: int) -> np.ndarray:
    """Check a batch of embeddings [n, D] and scale each row to unit norm (the cache's contract)."""
    if vectors.shape != (expected, dim):
        raise InputError(f"entries {start}..{start + expected - 1}: expected embeddings [{expected}, {dim}], got {vectors.shape}")
    vectors = vectors.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # [n, 1]
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise InputError(f"entry {start + bad[0]} has a zero or non-finite embedding")
    return vectors / norms


def _resume(rows_path: Path, sources_tmp: Path, sources: Sequence[str | None], dim: int) -> int:
    """How many entries an earlier run finished; both partial files are cut back to that many."""
    if not sources_tmp.is_file():
        rows_path.unlink(missing_ok=True)
        return 0
    with open(sources_tmp, encoding="utf-8") as f:
        lines = [line for line in f if line.endswith("\n")]  # a torn last line is dropped
    done = min(rows_path.stat().st_size // (4 * dim) if rows_path.is_file() else 0, len(lines))
    for entry, line in enumerate(lines[:done]):
        if entry >= len(sources) or json.loads(line)["source"] != sources[entry]:
            now = sources[entry] if entry < len(sources) else "nothing"
            raise InputError(
                f"{sources_tmp} is an unfinished build with other inputs (entry {entry} was {json.loads(line)['source']!r}, "
                f"now {now!r}): pass the same inputs to resume, or delete {sources_tmp.name} to start over"
            )
    with open(rows_path, "ab") as f:
        f.truncate(done * 4 * dim)
    with open(sources_tmp, "w", encoding="utf-8") as f:
        f.writelines(lines[:done])
    if done:
        logger.info("resuming the cache build at entry %d of %d", done, len(sources))
    return done


def _sync(*files) -> None:
    for f in files:
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------
# Compacting a cache


# our name -> faiss factory code of the IVF lists' codes. Any other faiss factory code may be given
# as the codec too, e.g. "PQ128x4fs,Refine(SQ8)": 4-bit fast-scan candidates re-scored on SQ8 codes.
CODECS = {"SQ8": "SQ8", "SQ6": "SQ6", "SQ4": "SQ4", "fp16": "SQfp16"}


def compact(
    index: "faiss.Index",
    *,
    codec: str = "SQ8",
    nlist: int | None = None,
    nprobe: int = 32,
    train_size: int | None = None,
    k_factor: int = 32,
    batch_size: int = 65536,
    progress: bool = True,
) -> "faiss.Index":
    """Re-encode a cache index as IVF with compressed codes; entry ids stay the same.

    codec: "SQ8" (the default: 8 bits a dimension, 0.255x the RAM of fp32 with faiss's 8-byte ids
    counted, top-10 recall 0.99), "SQ6" (0.19x, recall 0.93), "SQ4", "fp16", or a faiss factory
    code for the lists' codes: "PQ128x4fs,Refine(SQ8)" (0.27x, recall 0.98) scans 4-bit codes and
    re-scores `k_factor` candidates per neighbour on SQ8 codes, ~10x faster than "SQ8" at 3M
    entries but weak for queries far from every entry (top-1 similarity 0.14: recall 0.49 vs
    0.93), as audio or text against image features can be; measured on clustered 1024-d vectors
    by benchmarks/bench_cache.py.
    nlist defaults to sqrt(n) rounded to a power of two; the coarse quantizer (and the codes' ranges)
    are trained on `train_size` vectors (39 * nlist by default, faiss's minimum without a warning).
    k_factor (codes with a Refine stage only, saved in the file): candidates re-scored per neighbour asked for.
    """
    if k_factor < 1:
        raise InputError(f"k_factor={k_factor} must be at least 1")
    total = index.ntotal
    nlist = nlist or 2 ** round(np.log2(np.sqrt(total)))
    if total < nlist:
        raise InputError(f"nlist={nlist} is larger than the cache ({total} entries)")
    train_size = min(total, train_size or 39 * nlist)
    try:  # inner product on unit vectors: scores are the similarities, whatever the source metric was
        out = faiss.index_factory(index.d, f"IVF{nlist},{CODECS.get(codec, codec)}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise InputError(f"codec={codec!r} is not one of {', '.join(CODECS)} nor a faiss factory code ({str(error).splitlines()[0]})") from None
    refine = faiss.downcast_index(out)  # a view of `out` as its own class; `out` keeps the ownership
    if isinstance(refine, faiss.IndexRefine):
        refine.k_factor = k_factor
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()  # an IVF source gives back vectors by id only through a direct map

    sample = np.sort(np.random.default_rng(0).choice(total, train_size, replace=False))  # [train_size]
    out.train(index.reconstruct_batch(sample))  # [train_size, D]
    for start in tqdm(range(0, total, batch_size), desc="compacting cache", unit="batch", disable=not progress):
        out.add(index.reconstruct_n(start, min(batch_size, total - start)))  # [batch, D], ids continue in order
    faiss.extract_index_ivf(out).nprobe = nprobe  # saved in the file
    return out


def compact_index(source: str | os.PathLike, output: str | os.PathLike, *, dim: int = EMBED_DIM, **options) -> Path:
    """`compact` from file to file, copying the sources sidecar; options as for `compact`."""
    # The source passes the load-time checks; it is mapped from disk, not read into RAM.
    cache = VisualCache.from_index(source, dim=dim, mmap=True)
    index = compact(cache.index, **options)
    output = Path(output)
    tmp = output.with_name(output.name + ".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, output)
    if cache.sources is not None:  # ids are kept, so the sidecar is valid as it is
        shutil.copyfile(sources_path(source), sources_path(output))
    return output


# ---------------------------------------------------------------------------------------------
# The command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ibllm cache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        "--codec", default="SQ8",
        help="vector codes: SQ8 (default: 8 bits a dimension, 0.255x fp32 RAM), SQ6 (0.19x, lower recall), SQ4, fp16, "
             "or a faiss factory code such as 'PQ128x4fs,Refine(SQ8)' (0.27x, ~10x faster searches at 3M entries, "
             "lower recall for queries far from every entry, e.g. audio/text against images)",
    )
    shrink.add_argument("--nlist", type=int, default=None, help="IVF lists (default: sqrt(n) as a power of two)")
    shrink.add_argument("--nprobe", type=int, default=32, help="lists searched per query, saved in the file (default 32)")
    shrink.add_argument("--k-factor", type=int, default=32, help="codes with a Refine stage: candidates re-scored per neighbour asked for, saved in the file (default 32)")
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

    from ..encoders.encoder import MultimodalEncoder
    from ..inputs.image import load_image
    from ..inputs.limits import InputLimits

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
