"""The pocket world's claims (docs/pocket_world.md) as a benchmark of `python -m demo.eval`.

For each input modality and each held-out object, the pipeline (encoder -> mix -> optional visual
cache -> bind network -> gated LLaMA) answers one question per attribute the modality carries,
greedily; `language.parse_answer` reads the attribute back. Stage 1 paired images alone with
text; stage 2 saw instructions about images, depth maps and point clouds (the last two
so that the model learns what they cannot show); sounds and videos were never paired with text
(the encoder aligned audio, depth and points to images).
Each (modality, cache on/off) pair is one task, and so is the arithmetic below.

Modality arithmetic: the embeddings of two objects that differ in every attribute (the image of
A, the sound of B) are mixed 0.5 / 0.5; the model is asked the shape, colour and size questions,
and we count shape/colour answers naming either object's value, and mixes whose three answers
name at least one value of EACH object (e.g. A's size and B's colour), against chance.

Moved here from demo/world/evaluate.py (which re-exports it for `python -m demo.world`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace

from ..cache import RetrievalSettings
from ..config import GenerationConfig
from ..pipeline import InputItem
from ..world.language import EVAL_QUESTIONS, parse_answer
from ..world.scene import ATTRIBUTES, OBSERVABLE
from .runner import Runner, RunSettings, Sample

logger = logging.getLogger(__name__)
GREEDY = GenerationConfig(max_new_tokens=24, temperature=0.0)
NEVER_WITH_TEXT = ("audio",)  # aligned to images only, never in an instruction
# In stage 2 since issue 13, so that the model learns what they cannot show (colour, size).
STAGE2_WITH_TEXT = ("point", "depth")
MODALITIES = ("image", "video", "audio", "point", "depth")
README_NAMES = {"point": "point cloud"}


@dataclass
class Evaluation:
    """Accuracies in [0, 1]: rows[(modality, cache on)] = {attribute: accuracy}."""

    rows: dict[tuple[str, bool], dict[str, float]] = field(default_factory=dict)
    objects: int = 0
    mix: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """Markdown table of the results, chance in the last row."""
        names = list(ATTRIBUTES)
        lines = ["| input | paired with text in training | visual cache | " + " | ".join(names) + " |",
                 "|---|---|---|" + "---|" * len(names)]
        for (modality, cached), accuracy in self.rows.items():
            cells = [f"{100 * accuracy[a]:.0f}%" if a in accuracy else "–" for a in names]
            lines.append(f"| {modality} | {_paired(modality)} | {'on' if cached else 'off'} | " + " | ".join(cells) + " |")
        lines.append("| chance | | | " + " | ".join(f"{100 / len(ATTRIBUTES[a]):.0f}%" for a in names) + " |")
        text = "\n".join(lines) + f"\n\n{self.objects} held-out objects per row; greedy answers to one question per attribute."
        if self.mix:
            m = self.mix
            text += (
                f"\n\nModality arithmetic ({m['pairs']:.0f} mixes of image A + sound B, 0.5 / 0.5, A and B differ in every "
                f"attribute; shape, colour and size questions): {100 * m['either']:.0f}% of shape/colour answers name A's "
                f"or B's value (chance {100 * m['either_chance']:.0f}%); in {100 * m['both']:.0f}% of mixes the answers "
                f"name a value of A AND a value of B (chance {100 * m['both_chance']:.0f}%); they name A in "
                f"{100 * m['a']:.0f}% and B in {100 * m['b']:.0f}% of mixes."
            )
        return text

    def readme_table(self) -> str:
        """The README's compact table: cache off / on in one cell."""
        names = list(ATTRIBUTES)
        lines = ["| input | paired with text in training | cache off / on: " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for modality in dict.fromkeys(m for m, _ in self.rows):
            settings = [self.rows[key] for key in ((modality, False), (modality, True)) if key in self.rows]
            cells = [" / ".join(f"{100 * row[a]:.0f}%" for row in settings) if a in settings[0] else "–" for a in names]
            paired = _paired(modality).replace("no", "**no**", 1) if modality in NEVER_WITH_TEXT else _paired(modality)
            lines.append(f"| {README_NAMES.get(modality, modality)} | {paired} | " + " | ".join(cells) + " |")
        lines.append("| chance | | " + " | ".join(f"{100 / len(ATTRIBUTES[a]):.0f}%" for a in names) + " |")
        return "\n".join(lines)

    def numbers(self) -> dict:
        return {"objects": self.objects, "answers": {f"{m} cache {'on' if c else 'off'}": row for (m, c), row in self.rows.items()},
                "mix": self.mix}


def _paired(modality: str) -> str:
    if modality in STAGE2_WITH_TEXT:
        return "stage 2 only"
    return "no" if modality in NEVER_WITH_TEXT else "yes" if modality == "image" else "no (image tower)"


def _object_id(entry: dict) -> str:
    return str(entry.get("index", entry["caption"]))


def attribute_samples(entries: list[dict], modalities, cache_settings: list[bool], cache_on: RetrievalSettings | None = None) -> list[Sample]:
    """One sample per (modality, cache setting, object, attribute the modality carries);
    `cache_on` holds k / temperature / weight for the cache-on rows (default: RetrievalSettings's)."""
    cache_on = replace(cache_on or RetrievalSettings(), enabled=True)
    samples = []
    for modality in modalities:
        for cached in cache_settings:
            for entry in entries:
                for attribute in OBSERVABLE[modality]:
                    samples.append(Sample(
                        id=f"pocket/{modality}/cache-{'on' if cached else 'off'}/{_object_id(entry)}/{attribute}",
                        question=EVAL_QUESTIONS[attribute],
                        inputs=[InputItem(modality, entry["files"][modality])],
                        reference={"modality": modality, "cache": cached, "attribute": attribute, "truth": entry[attribute]},
                        cache=cache_on if cached else RetrievalSettings(enabled=False),
                    ))
    return samples


def choose_pairs(entries: list[dict], pairs: int) -> list[tuple[int, int]]:
    """`pairs` (a, b) index pairs of objects that differ in every attribute (seeded)."""
    rng = random.Random(0)
    index = list(range(len(entries)))
    chosen = []
    if pairs and len(entries) >= 2:
        for _ in range(100_000):  # a small world may hold few such pairs; stop rather than loop forever
            if len(chosen) == pairs:
                break
            a, b = rng.sample(index, 2)
            if all(entries[a][k] != entries[b][k] for k in ATTRIBUTES):
                chosen.append((a, b))
    return chosen


def mix_samples(runner: Runner, entries: list[dict], pairs: list[tuple[int, int]]) -> list[Sample]:
    samples = []
    for a, b in pairs:
        # Equal weights as ONE embedding input: the sum, which the pipeline renormalises, as the
        # original table did (two 0.5 inputs would give a shorter, unnormalised mix).
        mixed = runner.embed(InputItem("image", entries[a]["files"]["image"])) + runner.embed(InputItem("audio", entries[b]["files"]["audio"]))
        for attribute in ATTRIBUTES:
            samples.append(Sample(
                id=f"pocket/mix/{_object_id(entries[a])}+{_object_id(entries[b])}/{attribute}",
                question=EVAL_QUESTIONS[attribute],
                inputs=[InputItem("embedding", mixed, name="mix")],
                reference={"a": _object_id(entries[a]), "b": _object_id(entries[b]), "attribute": attribute,
                           "truth_a": entries[a][attribute], "truth_b": entries[b][attribute]},
                cache=RetrievalSettings(enabled=False),
            ))
    return samples


def score_attributes(records: list[dict]) -> dict[tuple[str, bool], dict[str, float]]:
    hits: dict[tuple[str, bool], dict[str, list[bool]]] = {}
    for record in records:
        ref = record["reference"]
        row = hits.setdefault((ref["modality"], ref["cache"]), {})
        row.setdefault(ref["attribute"], []).append(parse_answer(record["answer"])[ref["attribute"]] == ref["truth"])
    return {key: {a: sum(v) / len(v) for a, v in row.items()} for key, row in hits.items()}


def score_mix(records: list[dict]) -> dict[str, float]:
    by_pair: dict[tuple[str, str], list[tuple[str, str | None, str, str]]] = {}
    for record in records:
        ref = record["reference"]
        said = parse_answer(record["answer"])[ref["attribute"]]
        by_pair.setdefault((ref["a"], ref["b"]), []).append((ref["attribute"], said, ref["truth_a"], ref["truth_b"]))
    pairs = len(by_pair)
    either = names_a = names_b = both = 0
    for said in by_pair.values():
        either += sum(value in (a, b) for k, value, a, b in said if k != "size") / 2
        of_a = any(value == a for _, value, a, _ in said)
        of_b = any(value == b for _, value, _, b in said)
        names_a, names_b, both = names_a + of_a, names_b + of_b, both + (of_a and of_b)
    # Chance: answers drawn uniformly from each attribute's values, for the same kind of pairs.
    sim = random.Random(1)
    trials, both_chance = 4000, 0
    for _ in range(trials):
        a = {k: sim.choice(v) for k, v in ATTRIBUTES.items()}
        b = {k: sim.choice([x for x in v if x != a[k]]) for k, v in ATTRIBUTES.items()}
        said = {k: sim.choice(v) for k, v in ATTRIBUTES.items()}
        both_chance += any(said[k] == a[k] for k in said) and any(said[k] == b[k] for k in said)
    either_chance = (2 / len(ATTRIBUTES["shape"]) + 2 / len(ATTRIBUTES["colour"])) / 2
    return {"pairs": pairs, "either": either / pairs, "either_chance": either_chance, "both": both / pairs,
            "both_chance": both_chance / trials, "a": names_a / pairs, "b": names_b / pairs}


def run(runner: Runner, entries: list[dict], modalities=MODALITIES, mix: int = 48, cache_settings: list[bool] | None = None,
        cache_on: RetrievalSettings | None = None) -> Evaluation:
    """The table on `entries` (held-out manifest entries with all files). Without `cache_settings`,
    the pipeline's cache (if loaded) adds the "on" rows; without a cache only "off" rows are made."""
    settings = cache_settings if cache_settings is not None else [False] + ([True] if runner.pipe.cache is not None else [])
    if True in settings and runner.pipe.cache is None:
        from ..errors import InputError

        raise InputError("cache-on rows need a visual cache: pass --cache-index (the pocket folder's cache.index)")
    result = Evaluation(objects=len(entries))
    records = runner.answer_all(attribute_samples(entries, modalities, settings, cache_on), desc="pocket attributes")
    result.rows = score_attributes(records)
    for key, row in result.rows.items():
        logger.info("%s cache %s: %s", key[0], "on" if key[1] else "off", row)
    if mix and {"image", "audio"} <= set(modalities):
        pairs = choose_pairs(entries, mix)
        if pairs:
            result.mix = score_mix(runner.answer_all(mix_samples(runner, entries, pairs), desc="pocket arithmetic"))
    return result


def evaluate(pipe, entries: list[dict], modalities=MODALITIES, mix_pairs: int = 48, *, out=None, progress: bool = False) -> Evaluation:
    """The former `demo.world.evaluate.evaluate`: the table for `pipe` on `entries`, greedy.
    Answers are cached in `out` when given (a temporary folder otherwise)."""
    import tempfile

    settings = RunSettings(model="pipeline", generation=GREEDY)
    if out is not None:
        return run(Runner(pipe, out, settings, progress=progress), entries, modalities, mix_pairs)
    with tempfile.TemporaryDirectory(prefix="pocket-eval-") as folder:
        return run(Runner(pipe, folder, settings, progress=progress), entries, modalities, mix_pairs)


# ---------------------------------------------------------------------------------------------
# Conversations (issue 13): follow-up questions, and what an input cannot show
# ---------------------------------------------------------------------------------------------
def dialogues(pipe, entries: list[dict], modalities=MODALITIES, *, cache: RetrievalSettings | None = None, workers: int = 8) -> dict:
    """Per modality, on held-out objects, greedily, as the app asks: the shape question, then
    each FOLLOW_UPS question with the model's OWN first answer as history; and, single-turn, each
    attribute the modality cannot show. A follow-up is right when it names the true value of an
    attribute the input carries, or says it cannot tell one it does not (scene.OBSERVABLE);
    "cannot" is the share of single-turn questions about what the input cannot show that are
    answered so. {"objects", "cache", "follow_up": {modality: {attribute: accuracy}},
    "cannot": {modality: {attribute: share}}}."""
    from concurrent.futures import ThreadPoolExecutor

    from ..world.language import CANNOT_TELL, FOLLOW_UPS

    cache = cache or RetrievalSettings(enabled=pipe.cache is not None)

    def ask(question: str, conditioning, history=()) -> str:
        return "".join(pipe.stream(question, conditioning, history=list(history), generation=GREEDY))

    def right(text: str, modality: str, attribute: str, entry: dict) -> bool:
        if attribute in OBSERVABLE[modality]:
            return parse_answer(text)[attribute] == entry[attribute]
        return CANNOT_TELL in text.lower()

    def one(job: tuple[str, dict]) -> tuple[str, dict[str, bool], dict[str, bool]]:
        modality, entry = job
        conditioning = pipe.encode([InputItem(modality, entry["files"][modality])], cache)
        first = ask(EVAL_QUESTIONS["shape"], conditioning)
        follow = {a: right(ask(q, conditioning, [(EVAL_QUESTIONS["shape"], first)]), modality, a, entry) for a, q in FOLLOW_UPS.items()}
        cannot = {a: right(ask(EVAL_QUESTIONS[a], conditioning), modality, a, entry) for a in ATTRIBUTES if a not in OBSERVABLE[modality]}
        return modality, follow, cannot

    jobs = [(m, e) for m in modalities for e in entries]
    with ThreadPoolExecutor(workers) as pool:  # concurrent streams share the engine's batches
        results = list(pool.map(one, jobs))
    follow_up: dict[str, dict[str, float]] = {}
    cannot: dict[str, dict[str, float]] = {}
    for modality in modalities:
        mine = [r for r in results if r[0] == modality]
        follow_up[modality] = {a: sum(r[1][a] for r in mine) / len(mine) for a in FOLLOW_UPS}
        if mine and mine[0][2]:
            cannot[modality] = {a: sum(r[2][a] for r in mine) / len(mine) for a in mine[0][2]}
    return {"objects": len(entries), "cache": cache.enabled, "follow_up": follow_up, "cannot": cannot}


def dialogue_table(numbers: dict) -> str:
    """Markdown for `dialogues`' numbers."""
    from ..world.language import FOLLOW_UPS

    lines = ["| input | " + " | ".join(f'follow-up "{q}"' for q in FOLLOW_UPS.values()) + " | single turn, what it cannot show |",
             "|---|" + "---|" * len(FOLLOW_UPS) + "---|"]
    for modality, row in numbers["follow_up"].items():
        cells = [f"{100 * row[a]:.0f}%" + ("" if a in OBSERVABLE[modality] else " say they cannot tell") for a in FOLLOW_UPS]
        cannot = numbers["cannot"].get(modality)
        single = ", ".join(f"{a}: {100 * v:.0f}% say they cannot tell" for a, v in cannot.items()) if cannot else "–"
        lines.append(f"| {README_NAMES.get(modality, modality)} | " + " | ".join(cells) + f" | {single} |")
    chance = " | ".join(f"{100 / len(ATTRIBUTES[a]):.0f}%" for a in FOLLOW_UPS)
    lines.append(f"| chance (naming a value) | {chance} | |")
    return "\n".join(lines) + (
        f"\n\n{numbers['objects']} held-out objects per row, visual cache {'on' if numbers['cache'] else 'off'}; greedy. "
        "Follow-ups come after the shape question, with the model's own answer to it in the history (the prompt the "
        "app sends). A follow-up about what the input carries counts when it names the true value; about what it "
        "cannot show (colour from a depth map; colour and size from a point cloud), when it says it cannot tell."
    )
