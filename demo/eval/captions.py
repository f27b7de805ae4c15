"""Caption benchmarks for any modality: a JSONL of inputs with reference captions, scored with
BLEU-1..4 and CIDEr-D from pycocoevalcap (the COCO caption evaluation code).

One line per sample (paths relative to the JSONL file's folder):

    {"id": "clotho-17", "modality": "audio", "file": "audio/17.wav", "captions": ["a dog barks", "..."]}
    {"id": "msrvtt-3", "modality": "video", "file": "video/3.mp4", "captions": ["..."], "question": "..."}

`modality` is any input modality of the pipeline (image, audio, video, point, depth, thermal, imu);
`question` overrides the prompt for that sample. Audio (Clotho, AudioCaps), video (MSR-VTT) and
point-cloud (Objaverse/Cap3D) caption sets convert to this in a few lines (docs/evaluation.md).

Tokenisation: the COCO code tokenises with Stanford's PTB tokenizer, which needs Java; we
lower-case and keep runs of letters, digits and apostrophes, which drops the same punctuation
marks the COCO code removes, so scores match for ordinary captions. Scores are reported per
modality and over all samples (CIDEr's document frequencies come from the set scored, as in COCO).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from ..errors import InputError
from ..modalities import get_modality
from ..pipeline import InputItem
from .runner import Sample

DEFAULT_QUESTION = "Describe this {noun} in one sentence."
NOUNS = {"image": "image", "audio": "sound", "video": "video", "point": "3D object", "depth": "depth map",
         "thermal": "thermal image", "imu": "motion recording"}
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def tokenize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def load(path: str | Path, *, question: str | None = None, limit: int | None = None) -> list[Sample]:
    """Samples from a captions JSONL; `question` replaces the default per-modality prompt."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"caption file {path} does not exist: see docs/evaluation.md (captions) for its format")
    samples, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            modality, file, captions = row["modality"], row["file"], row["captions"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{path} line {number}: expected a JSON object with modality, file and captions ({exc})") from None
        try:
            get_modality(modality)
        except KeyError as exc:
            raise InputError(f"{path} line {number}: {exc.args[0]}") from None
        if isinstance(captions, str):
            captions = [captions]
        if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise InputError(f"{path} line {number}: captions must be a non-empty list of strings")
        sample_id = f"captions/{row.get('id', number)}"
        if sample_id in seen:
            raise InputError(f"{path} line {number}: id {row.get('id')!r} appears twice; ids must be unique")
        seen.add(sample_id)
        prompt = row.get("question") or question or DEFAULT_QUESTION.format(noun=NOUNS.get(modality, modality))
        samples.append(Sample(
            id=sample_id,
            question=prompt,
            inputs=[InputItem(modality, str((path.parent / file)))],
            reference={"modality": modality, "captions": captions},
        ))
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise InputError(f"{path} holds no samples")
    return samples


def caption_metrics(candidates: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D (pycocoevalcap) of {id: caption} against {id: [references]}."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {k: [tokenize(r) for r in refs] for k, refs in references.items()}
    res = {k: [tokenize(candidates[k]) or "<empty>"] for k in references}  # the scorers reject an empty list
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {**{f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}, "CIDEr": float(cider)}


def score(records: list[dict]) -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        groups[record["reference"]["modality"]].append(record)
    result = {}
    for name, rows in [*groups.items(), ("all", records)]:
        if name == "all" and len(groups) == 1:
            continue
        metrics = caption_metrics({r["id"]: r["answer"] for r in rows}, {r["id"]: r["reference"]["captions"] for r in rows})
        result[name] = {"samples": len(rows), **metrics}
    return {"modalities": result}


def table(scores: dict) -> str:
    names = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr")
    lines = ["| modality | samples | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for modality, row in scores["modalities"].items():
        lines.append(f"| {modality} | {row['samples']} | " + " | ".join(f"{100 * row[n]:.1f}" for n in names) + " |")
    lines.append("")
    lines.append("Scores x 100 (pycocoevalcap BLEU and CIDEr-D; CIDEr document frequencies from the scored set).")
    return "\n".join(lines)
