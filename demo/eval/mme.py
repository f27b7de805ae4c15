"""MME (Fu et al. 2023): 14 yes/no subtasks, two questions per image, scored as the official
`eval_tool/calculation.py` does.

Data: the release `MME_Benchmark_release_version/` (from the MME authors, see docs/evaluation.md;
never downloaded here). Each subtask folder has one of two official layouts:

    artwork/images/10002.jpg + artwork/questions_answers_YN/10002.txt      (split)
    count/000000006040.jpg   + count/000000006040.txt                      (flat)

where each .txt holds the image's questions, one `question<TAB>Yes|No` line each. The combined
form of the official eval tool (`eval_tool/Your_Results/<subtask>.txt`, lines
`image<TAB>question<TAB>answer`) is read too, with `--mme-list`: it fixes the question order the
official scripts use, the images coming from the data folder.

Scoring, per subtask (as the official calculation):
- the answer is lower-cased; exactly "yes" / "no", else "yes" if its first 4 characters contain
  "yes", else "no" if they contain "no", else "other" (always wrong);
- accuracy = right answers / questions; accuracy+ = images with BOTH questions right / images;
- score = 100 * (accuracy + accuracy+), at most 200 per subtask;
- perception = sum of the 10 perception scores (at most 2000), cognition = sum of the 4
  cognition scores (at most 800).
The answers are also written in the official results format (`<out>/mme_results/<subtask>.txt`,
`image<TAB>question<TAB>truth<TAB>answer`) so `calculation.py --results_dir` can check our numbers.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from ..errors import InputError
from ..pipeline import InputItem
from .runner import Sample

logger = logging.getLogger(__name__)

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
OFFICIAL_SUFFIX = "Please answer yes or no."  # ends every official question; `suffix` replaces it
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")
SOURCE_URL = "https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation"  # the authors' instructions
PAPER_TARGET = {"perception": 775.77, "cognition": 213.57}  # ImageBind-LLM paper, real 7B weights


def parse_answer(answer: str) -> str:
    """The official `parse_pred_ans`: 'yes', 'no' or 'other'. The official file holds the answer
    on one line, so surrounding white space is dropped first (its own lines end with a newline)."""
    answer = answer.strip().lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def find_root(data: str | Path) -> Path:
    """The folder holding the subtask folders: `data` itself or one level below (the release zip
    unpacks to MME_Benchmark_release_version/MME_Benchmark/ in some copies)."""
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"MME data folder {data} does not exist: get MME_Benchmark_release_version from the authors "
                         f"({SOURCE_URL}; docs/evaluation.md, MME) and pass its folder")
    for root in (data, *sorted(p for p in data.iterdir() if p.is_dir())):
        if any(_subtask_folder(root, name) for name in SUBTASKS):
            return root
    raise InputError(f"{data} holds none of the MME subtask folders ({', '.join(SUBTASKS)}): point --data at MME_Benchmark_release_version")


def _subtask_folder(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / name.lower()):
        if candidate.is_dir():
            return candidate
    return None


def _image_for(folder: Path, stem: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise InputError(f"MME: no image named {stem}.* in {folder} for its questions file")


def _read_lines(path: Path, fields: int) -> list[list[str]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != fields:
            raise InputError(f"{path} line {number}: expected {fields} tab-separated fields, got {len(parts)}")
        rows.append([p.strip() for p in parts])
    return rows


def read_subtask(folder: Path) -> list[tuple[Path, str, str]]:
    """(image, question, 'yes'|'no') for one subtask folder in either release layout, in file order."""
    split = (folder / "images").is_dir() and (folder / "questions_answers_YN").is_dir()
    questions_dir, images_dir = (folder / "questions_answers_YN", folder / "images") if split else (folder, folder)
    items = []
    for txt in sorted(questions_dir.glob("*.txt")):
        image = _image_for(images_dir, txt.stem)
        items += [(image, question, truth.lower()) for question, truth in _read_lines(txt, 2)]
    return items


def read_listed(list_file: Path, folder: Path) -> list[tuple[Path, str, str]]:
    """The eval tool's combined form: `image<TAB>question<TAB>answer` lines; images in `folder`
    (or its images/ subfolder)."""
    images_dir = folder / "images" if (folder / "images").is_dir() else folder
    items = []
    for image, question, truth in _read_lines(list_file, 3):
        path = images_dir / image
        if not path.is_file():
            raise InputError(f"{list_file}: image {image} is not in {images_dir}")
        items.append((path, question, truth.lower()))
    return items


def load(data: str | Path, *, listing: str | Path | None = None, suffix: str = OFFICIAL_SUFFIX,
         subtasks: tuple[str, ...] = SUBTASKS, limit: int | None = None) -> list[Sample]:
    """MME samples. `suffix` replaces the official "Please answer yes or no." at the end of each
    question ("" asks the bare question). `limit` keeps the first `limit` IMAGES of each subtask
    (both questions of an image stay together, so accuracy+ stays defined)."""
    root = find_root(data)
    samples, missing = [], []
    for name in subtasks:
        folder = _subtask_folder(root, name)
        listed = Path(listing) / f"{name}.txt" if listing else None
        if folder is None:
            missing.append(name)
            continue
        items = read_listed(listed, folder) if listed and listed.is_file() else read_subtask(folder)
        by_image: dict[Path, list[tuple[str, str]]] = defaultdict(list)
        for image, question, truth in items:
            if truth not in ("yes", "no"):
                raise InputError(f"MME {name}: answer {truth!r} for {image.name} is neither Yes nor No")
            by_image[image].append((question, truth))
        for image in list(by_image)[:limit]:
            for number, (question, truth) in enumerate(by_image[image]):
                samples.append(Sample(
                    id=f"mme/{name}/{image.name}/{number}",
                    question=with_suffix(question, suffix),
                    inputs=[InputItem("image", str(image))],
                    reference={"subtask": name, "image": image.name, "question": question, "truth": truth},
                ))
    if missing:
        logger.warning("MME: subtasks missing from %s, left out of the totals: %s", root, ", ".join(missing))
    if not samples:
        raise InputError(f"MME: no questions found under {root}")
    return samples


def with_suffix(question: str, suffix: str) -> str:
    question = question.strip()
    if question.endswith(OFFICIAL_SUFFIX):
        question = question[: -len(OFFICIAL_SUFFIX)].rstrip()
    return f"{question} {suffix}".strip() if suffix else question


def score(records: list[dict]) -> dict:
    """Scores from runner records (reference = {subtask, image, truth}); see the module docstring."""
    per_task: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))  # subtask -> image -> [right?]
    others: dict[str, int] = defaultdict(int)
    for record in records:
        ref = record["reference"]
        said = parse_answer(record["answer"])
        others[ref["subtask"]] += said == "other"
        per_task[ref["subtask"]][ref["image"]].append(said == ref["truth"])
    subtasks = {}
    for name in SUBTASKS:
        if name not in per_task:
            continue
        images = per_task[name]
        answers = [right for rights in images.values() for right in rights]
        accuracy = sum(answers) / len(answers)
        accuracy_plus = sum(all(rights) for rights in images.values()) / len(images)
        subtasks[name] = {"questions": len(answers), "images": len(images), "accuracy": accuracy, "accuracy_plus": accuracy_plus,
                          "score": 100 * (accuracy + accuracy_plus), "other": others[name]}
    totals = {kind: sum(subtasks[n]["score"] for n in names if n in subtasks) for kind, names in (("perception", PERCEPTION), ("cognition", COGNITION))}
    complete = {kind: all(n in subtasks for n in names) for kind, names in (("perception", PERCEPTION), ("cognition", COGNITION))}
    return {"subtasks": subtasks, **totals, "complete": complete, "paper_target": PAPER_TARGET}


def table(scores: dict) -> str:
    lines = ["| subtask | kind | images | questions | accuracy | accuracy+ | score | unparsed answers |", "|---|---|---|---|---|---|---|---|"]
    for name, s in scores["subtasks"].items():
        kind = "perception" if name in PERCEPTION else "cognition"
        lines.append(f"| {name} | {kind} | {s['images']} | {s['questions']} | {100 * s['accuracy']:.2f} | "
                     f"{100 * s['accuracy_plus']:.2f} | {s['score']:.2f} | {s['other']} |")
    for kind in ("perception", "cognition"):
        note = "" if scores["complete"][kind] else " (subtasks missing: not comparable)"
        lines.append(f"| **{kind}** | | | | | | **{scores[kind]:.2f}**{note} | |")
    lines.append("")
    lines.append(f"Paper (ImageBind-LLM, real 7B weights): perception {PAPER_TARGET['perception']}, cognition {PAPER_TARGET['cognition']}.")
    return "\n".join(lines)


def write_official_results(records: list[dict], out: Path) -> Path:
    """`<out>/mme_results/<subtask>.txt` in the official results format, for calculation.py."""
    folder = Path(out) / "mme_results"
    folder.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = defaultdict(list)
    for record in records:
        ref = record["reference"]
        answer = " ".join(record["answer"].split())  # one line, no tabs: the file's format
        lines[ref["subtask"]].append(f"{ref['image']}\t{ref['question']}\t{ref['truth'].capitalize()}\t{answer}")
    for name, rows in lines.items():
        (folder / f"{name}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder
