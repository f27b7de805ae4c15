"""ImageBind image features, computed once and read by every training step.

ImageBind is frozen in both stages (reference section 11), so encoding each image at every step
repeats the same work; `extract_features` encodes each distinct image once. Layout of the folder:

    shard-00000.npy ...   float32 (N_k, E) blocks of L2-normalised embeddings
    index.jsonl           {"key": absolute image path, "shard": k, "row": i} one line per image

A shard is written (to a temporary name, then renamed) before its index lines are appended, so an
interrupted run loses at most the shard in progress; running again encodes only what is missing.
The key "<blank>" holds the blank image that text-only samples are trained with (an all-zero
image after normalisation, as the pipeline uses for text-only chat).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import InputError
from .data import IssueLog

BLANK = "<blank>"
INDEX_NAME = "index.jsonl"


class FeatureStore:
    """Read side: image key -> (E,) float32 embedding, shards memory-mapped."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._where: dict[str, tuple[int, int]] = {}
        index = self.folder / INDEX_NAME
        if index.exists():
            for line in index.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line torn by an interruption: its image is encoded again
                    continue
                self._where[entry["key"]] = (entry["shard"], entry["row"])
        self._shards: dict[int, np.ndarray] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    @property
    def next_shard(self) -> int:
        return 1 + max((shard for shard, _ in self._where.values()), default=-1)

    def get(self, keys: list[str]) -> torch.Tensor:
        """(B,) keys -> (B, E) float32."""
        rows = []
        for key in keys:
            shard, row = self._where[key]
            if shard not in self._shards:
                self._shards[shard] = np.load(self.folder / f"shard-{shard:05d}.npy", mmap_mode="r")
            rows.append(np.asarray(self._shards[shard][row]))
        return torch.from_numpy(np.stack(rows))


def _encode(encoder, samples: list[torch.Tensor]) -> torch.Tensor:
    """(N, 3, 224, 224) -> (N, E), L2-normalised per embedding as the pipeline does."""
    return F.normalize(encoder.encode_batch("image", torch.stack(samples), batch_size=len(samples)).float(), dim=-1)


def extract_features(
    images: dict[str, str],
    encoder,
    folder: Path,
    issues: IssueLog,
    *,
    batch_size: int = 32,
    shard_size: int = 4096,
    progress: bool = True,
) -> FeatureStore:
    """Encode every image of `images` ({absolute path: "file:line" that uses it}) not yet in
    `folder`, plus the blank image. Unreadable images are reported to `issues`."""
    from tqdm.auto import tqdm

    from ..inputs.registry import load_input

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    store = FeatureStore(folder)
    todo = [key for key in dict.fromkeys([BLANK, *images]) if key not in store]
    shard = store.next_shard
    pending_keys: list[str] = []
    pending: list[torch.Tensor] = []  # (E,) embeddings waiting for the shard to fill

    def flush() -> None:
        nonlocal shard
        if not pending_keys:
            return
        tmp = folder / f"shard-{shard:05d}.tmp.npy"
        np.save(tmp, torch.stack(pending).numpy())
        os.replace(tmp, folder / f"shard-{shard:05d}.npy")
        with (folder / INDEX_NAME).open("a") as index:  # only after the shard is complete
            index.writelines(json.dumps({"key": k, "shard": shard, "row": i}) + "\n" for i, k in enumerate(pending_keys))
        shard += 1
        pending_keys.clear()
        pending.clear()

    bar = tqdm(total=len(todo), desc="encoding images", unit="img", disable=not progress)
    batch_keys: list[str] = []
    batch: list[torch.Tensor] = []

    def run_batch() -> None:
        if batch:
            pending.extend(_encode(encoder, batch))
            pending_keys.extend(batch_keys)
            bar.update(len(batch))
            batch_keys.clear()
            batch.clear()
        if len(pending_keys) >= shard_size:
            flush()

    for key in todo:
        if key == BLANK:
            sample = torch.zeros(3, 224, 224)  # a normalised all-zero image
        else:
            try:
                sample = load_input("image", key)
            except InputError as exc:
                issues.report(images[key], f"unreadable image ({exc})")
                bar.update(1)
                continue
        batch_keys.append(key)
        batch.append(sample)
        if len(batch) >= batch_size:
            run_batch()
    run_batch()
    flush()
    bar.close()
    return FeatureStore(folder)
