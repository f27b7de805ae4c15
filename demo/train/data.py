"""Training data: caption sets (stage 1), instruction sets (stage 2), bad-data reports, tokens.

Formats (reference section 11):
  * captions, CSV with a header row `image,caption` or JSONL lines `{"image": ..., "caption": ...}`;
  * instructions, a JSON array or JSONL of Alpaca records `{"instruction", "input", "output"}`
    (text only) or LLaVA records `{"image", "conversations": [{"from": "human", ...}, {"from":
    "gpt", ...}, ...]}` (first turn only, as the release did). The two may be mixed.
Relative image paths are resolved against `image_root` (default: the data file's folder).

Every problem (malformed line, missing field, empty caption, missing image, prompt too long) is
reported with its file and line. `IssueLog(policy="error")` stops at the first one; "skip" logs
it, keeps a list (written to a JSONL file when given) and drops the sample. Never silent.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DemoError
from ..prompt import format_prompt

logger = logging.getLogger(__name__)

CAPTION_INSTRUCTION = "Generate caption of this image"  # stage 1's prompt (reference section 11)
IGNORE_INDEX = -100  # label of tokens without loss (prompt, padding)
BAD_DATA_POLICIES = ("skip", "error")


class BadDataError(DemoError, ValueError):
    """A training sample cannot be used and the policy is "error"."""


@dataclass(frozen=True)
class Record:
    """One training example, before tokenisation."""

    where: str  # "file:line", for reports
    instruction: str
    input: str | None
    output: str
    image: Path | None  # None: text only, trained with the blank image


class IssueLog:
    """Collects bad-data reports; raises at the first one under policy "error"."""

    def __init__(self, policy: str = "skip", path: Path | None = None):
        if policy not in BAD_DATA_POLICIES:
            raise ValueError(f"bad-data policy {policy!r}; choose one of {BAD_DATA_POLICIES}")
        self.policy = policy
        self.path = Path(path) if path else None
        if self.path is not None:
            self.path.write_text("")  # this run's report only (a resumed run reads the data again)
        self.issues: list[str] = []

    def report(self, where: str, reason: str) -> None:
        message = f"{where}: {reason}"
        if self.policy == "error":
            raise BadDataError(f"{message} (pass --bad-data skip to skip such samples and list them)")
        self.issues.append(message)
        logger.warning("skipped %s", message)
        if self.path is not None:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"where": where, "reason": reason}) + "\n")

    def summary(self) -> str:
        where = f" (listed in {self.path})" if self.path and self.issues else ""
        return f"{len(self.issues)} bad samples skipped{where}"


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def _json_array(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, element) for each element of a top-level JSON array.

    json.load gives no positions, so walk the array with raw_decode. A syntax error cannot be
    skipped (the rest of the file has no known structure), so it is always fatal."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()

    def skip_space(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def fail(pos: int, what: str) -> BadDataError:
        return BadDataError(f"{path}:{text.count(chr(10), 0, pos) + 1}: {what}; fix the JSON file")

    pos = skip_space(0)
    if pos >= len(text) or text[pos] != "[":
        raise fail(pos, "expected a JSON array of records")
    pos = skip_space(pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, f"malformed JSON ({exc.msg})") from None
        yield text.count("\n", 0, pos) + 1, item
        pos = skip_space(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip_space(pos + 1)
        elif pos < len(text) and text[pos] == "]":
            return
        else:
            raise fail(pos, "expected ',' or ']' after a record")


def _jsonl(path: Path, issues: IssueLog) -> Iterator[tuple[int, object]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                issues.report(f"{path}:{number}", f"malformed JSON line ({exc.msg})")


def _records(path: Path, issues: IssueLog) -> Iterator[tuple[int, object]]:
    """(line, raw record) from a .csv, .jsonl or .json file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"image", "caption"} <= set(reader.fieldnames):
                raise BadDataError(f"{path}:1: the CSV header must name the columns image and caption, got {reader.fieldnames}")
            for row in reader:
                if None in row or any(value is None for value in row.values()):  # too many / too few cells
                    issues.report(f"{path}:{reader.line_num}", f"expected {len(reader.fieldnames)} columns")
                    continue
                yield reader.line_num, row
    elif suffix == ".jsonl":
        yield from _jsonl(path, issues)
    elif suffix == ".json":
        yield from _json_array(path)
    else:
        raise BadDataError(f"{path}: unknown data format {suffix!r}; use .csv, .jsonl (one record a line) or .json (an array)")


def _text(record: dict, key: str) -> str | None:
    value = record.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _image_path(value: object, root: Path) -> Path | None:
    if not isinstance(value, str) or not value.strip():
        return None
    path = Path(value.strip()).expanduser()
    return (path if path.is_absolute() else root / path).resolve()


def _check_image(path: Path | None, where: str, issues: IssueLog) -> bool:
    if path is None:
        issues.report(where, "no image path")
        return False
    if not path.is_file():
        issues.report(where, f"image not found: {path}")
        return False
    return True


def read_captions(path: Path, issues: IssueLog, image_root: Path | None = None) -> list[Record]:
    """Image-caption pairs (stage 1) as Records with the captioning instruction."""
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    records: list[Record] = []
    for line, raw in _records(path, issues):
        where = f"{path}:{line}"
        if not isinstance(raw, dict):
            issues.report(where, "expected an object with image and caption")
            continue
        caption = _text(raw, "caption")
        image = _image_path(raw.get("image"), root)
        if caption is None:
            issues.report(where, "empty or missing caption")
        elif _check_image(image, where, issues):
            records.append(Record(where, CAPTION_INSTRUCTION, None, caption, image))
    return records


def read_instructions(path: Path, issues: IssueLog, image_root: Path | None = None) -> list[Record]:
    """Alpaca and/or LLaVA records (stage 2). LLaVA: first human/gpt turn, `<image>` removed."""
    path = Path(path)
    root = Path(image_root) if image_root else path.parent
    records: list[Record] = []
    for line, raw in _records(path, issues):
        where = f"{path}:{line}"
        if not isinstance(raw, dict):
            issues.report(where, "expected an Alpaca or LLaVA record (a JSON object)")
            continue
        if "conversations" in raw:
            turns = raw["conversations"]
            ok = isinstance(turns, list) and len(turns) >= 2 and all(isinstance(t, dict) for t in turns[:2])
            if not ok or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
                issues.report(where, "conversations must start with a human turn and a gpt turn")
                continue
            question = str(turns[0].get("value", "")).replace("<image>", "").strip() or None
            answer = _text(turns[1], "value")
            image = _image_path(raw.get("image"), root) if "image" in raw else None
            if question is None or answer is None:
                issues.report(where, "empty question or answer in the first turn")
            elif "image" not in raw or _check_image(image, where, issues):
                records.append(Record(where, question, None, answer, image))
        elif "instruction" in raw:
            instruction, output = _text(raw, "instruction"), _text(raw, "output")
            if instruction is None or output is None:
                issues.report(where, "empty or missing instruction or output")
                continue
            image = _image_path(raw.get("image"), root) if raw.get("image") else None
            if image is None or _check_image(image, where, issues):
                records.append(Record(where, instruction, _text(raw, "input"), output, image))
        else:
            issues.report(where, "neither an Alpaca record (instruction/output) nor a LLaVA one (conversations)")
    return records


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    ids: torch.Tensor  # (T,) int64: BOS + prompt + response + EOS, cut at max_len
    prompt_len: int  # the first prompt_len tokens carry no loss
    image: str | None  # feature-store key; None = the blank image


def tokenize(record: Record, tokenizer, max_len: int) -> Sample | None:
    """Prompt (BOS, template) and response (+ EOS) tokenised apart, so the loss mask is exact.

    Returns None when the prompt alone fills max_len (no response token would be trained)."""
    prompt = [tokenizer.bos_token_id] + tokenizer.encode(format_prompt(record.instruction, record.input), add_special_tokens=False)
    answer = tokenizer.encode(record.output, add_special_tokens=False) + [tokenizer.eos_token_id]
    if len(prompt) >= max_len:
        return None
    ids = torch.tensor((prompt + answer)[:max_len], dtype=torch.long)
    return Sample(ids, len(prompt), str(record.image) if record.image else None)


def tokenize_all(records: list[Record], tokenizer, max_len: int, issues: IssueLog) -> list[Sample]:
    samples = []
    for record in records:
        sample = tokenize(record, tokenizer, max_len)
        if sample is None:
            issues.report(record.where, f"the prompt is longer than --max-len {max_len} tokens")
        else:
            samples.append(sample)
    return samples


def collate(samples: list[Sample], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, labels, attention_mask), each (B, T). Labels are not shifted
    (transformers shifts them); prompt and padding positions are IGNORE_INDEX."""
    length = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.ids)
        ids[row, :n] = sample.ids
        labels[row, sample.prompt_len : n] = sample.ids[sample.prompt_len :]
        mask[row, :n] = 1
    return ids, labels, mask
