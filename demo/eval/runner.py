"""The loop every benchmark shares: samples -> answers (cached per sample in a JSONL) -> records.

A benchmark turns its data into `Sample`s (an id, a question, inputs, a reference) and scores the
records `Runner.answer_all` gives back. Each answer is appended to `<out>/answers.jsonl` as soon
as it is generated, under a key made of the sample id and a hash of everything that changes the
answer (model, question text, inputs, generation and cache settings); a second run with the same
settings reads the answers back instead of generating them, so an interrupted run resumes where it
stopped, and changing a setting generates afresh without losing the old answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..cache import RetrievalSettings
from ..config import GenerationConfig
from ..pipeline import InputItem

logger = logging.getLogger(__name__)
ANSWERS_NAME = "answers.jsonl"


@dataclass
class Sample:
    """One question to the model. `reference` is whatever the benchmark scores against (JSON)."""

    id: str
    question: str
    inputs: list[InputItem] = field(default_factory=list)
    reference: Any = None
    cache: RetrievalSettings | None = None  # this sample's cache setting (pocket rows); None: the run's


@dataclass
class RunSettings:
    """What the answers depend on besides the sample (part of every cache key)."""

    model: str  # "pocket", "tiny" or the folder's resolved path
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=32, temperature=0.0))
    cache: RetrievalSettings = field(default_factory=RetrievalSettings)


def _source_key(item: InputItem) -> Any:
    """How an input enters the key: a path as text, an in-memory tensor by a hash of its values."""
    if isinstance(item.source, (str, os.PathLike)):
        return str(item.source)
    if isinstance(item.source, torch.Tensor):
        return hashlib.sha1(item.source.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
    return repr(item.source)


def _cache_key(cache: RetrievalSettings) -> dict:
    # Only the settings that change an answer: the index path/nprobe/mmap are fixed by the loaded pipeline.
    return {"enabled": cache.enabled, **({"k": cache.k, "temperature": cache.temperature, "weight": cache.weight} if cache.enabled else {})}


def sample_key(sample: Sample, settings: RunSettings) -> str:
    """`<sample id>|<hash of the settings>`: the answer cache's key."""
    cache = sample.cache if sample.cache is not None else settings.cache
    described = {
        "model": settings.model,
        "question": sample.question,
        "inputs": [(item.modality, _source_key(item), item.weight) for item in sample.inputs],
        "generation": settings.generation.to_dict(),
        "cache": _cache_key(cache),
    }
    digest = hashlib.sha1(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
    return f"{sample.id}|{digest}"


def progress_bar(iterable, total: int, desc: str, enabled: bool):
    """tqdm (installed with the project's requirements) when `enabled`, the bare iterable otherwise."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="q", dynamic_ncols=True)


class Runner:
    """Answers samples with one pipeline, caching each answer in `<out>/answers.jsonl`."""

    def __init__(self, pipe, out: str | os.PathLike, settings: RunSettings, *, progress: bool = True):
        self.pipe = pipe
        self.out = Path(out)
        self.settings = settings
        self.progress = progress
        self.generated = 0  # answers generated (not read back) by this runner
        self._embeddings: dict[tuple[str, str], torch.Tensor] = {}
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / ANSWERS_NAME
        self._known = self._read()

    def _read(self) -> dict[str, dict]:
        known: dict[str, dict] = {}
        if self.path.exists():
            for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    record = json.loads(line)
                    known[record["key"]] = record
                except (json.JSONDecodeError, KeyError):  # a line cut by an interruption: answer it again
                    logger.warning("%s line %d is not a whole record; that sample will be answered again", self.path, number)
        return known

    @property
    def stored(self) -> int:
        """Answers in the answers file (every setting)."""
        return len(self._known)

    def embed(self, item: InputItem) -> torch.Tensor:
        """The pipeline's embedding of a file input, computed once per (modality, path) in a run:
        benchmarks ask several questions about one file (MME: two per image; pocket: one per attribute)."""
        if not isinstance(item.source, (str, os.PathLike)):
            return self.pipe.embed(item)
        key = (item.modality, str(item.source))
        if key not in self._embeddings:
            self._embeddings[key] = self.pipe.embed(item)  # (E,)
        return self._embeddings[key]

    def _generate(self, sample: Sample) -> str:
        # Files become their (memoised) embeddings with the same weights: `pipe.encode` mixes
        # embedding inputs exactly as it mixes the files' own embeddings.
        inputs = [
            item if item.modality == "embedding" else InputItem("embedding", self.embed(item), item.weight, item.display_name)
            for item in sample.inputs
        ]
        cache = sample.cache if sample.cache is not None else self.settings.cache
        return self.pipe(sample.question, inputs, generation=self.settings.generation, cache=cache).text

    def answer_all(self, samples: Sequence[Sample], desc: str = "answers") -> list[dict]:
        """One record per sample, in order: {key, id, question, answer, reference, seconds, cached}."""
        records = []
        keys = [sample_key(sample, self.settings) for sample in samples]
        todo = sum(key not in self._known for key in keys)
        logger.info("%s: %d samples, %d already answered in %s", desc, len(samples), len(samples) - todo, self.path)
        with self.path.open("a", encoding="utf-8") as sink:
            for sample, key in progress_bar(zip(samples, keys), len(samples), desc, self.progress):
                record = self._known.get(key)
                if record is None:
                    began = time.perf_counter()
                    answer = self._generate(sample)
                    record = {"key": key, "id": sample.id, "question": sample.question, "answer": answer,
                              "reference": sample.reference, "seconds": round(time.perf_counter() - began, 3)}
                    sink.write(json.dumps(record) + "\n")
                    sink.flush()  # on disk before the next sample: an interrupted run loses at most one answer
                    self._known[key] = record
                    self.generated += 1
                    records.append({**record, "cached": False})
                else:
                    records.append({**record, "cached": True})
        return records


def write_scores(out: str | os.PathLike, scores: dict, markdown: str) -> tuple[Path, Path]:
    """`<out>/scores.json` and `<out>/scores.md`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    (out / "scores.md").write_text(markdown.rstrip() + "\n", encoding="utf-8")
    return out / "scores.json", out / "scores.md"


def settings_dict(settings: RunSettings) -> dict:
    return {"model": settings.model, "generation": settings.generation.to_dict(), "cache": asdict(settings.cache)}
