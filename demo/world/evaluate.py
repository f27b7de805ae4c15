"""The paper's claims, measured on held-out pocket-world objects, through the real pipeline.

For each input modality and each held-out object, the pipeline (encoder -> mix -> optional visual
cache -> bind network -> gated LLaMA) answers one question per attribute the modality carries,
greedily; `language.parse_answer` reads the attribute back. Only images were ever paired with
text (stage 1 and 2 saw images alone; the encoder aligned audio, depth and points to images).

Modality arithmetic: the embeddings of two objects that differ in every attribute (the image of
A, the sound of B) are mixed 0.5 / 0.5; the model is asked the shape, colour and size questions,
and we count shape/colour answers naming either object's value, and mixes whose three answers
name at least one value of EACH object (e.g. A's size and B's colour), against chance.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import torch

from ..cache import CacheConfig
from ..config import GenerationConfig
from ..pipeline import InputItem
from .language import EVAL_QUESTIONS, parse_answer
from .scene import ATTRIBUTES, OBSERVABLE

logger = logging.getLogger(__name__)
GREEDY = GenerationConfig(max_new_tokens=24, temperature=0.0)
NEVER_WITH_TEXT = ("audio", "point", "depth")  # aligned to images only


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
            paired = "no" if modality in NEVER_WITH_TEXT else "yes" if modality == "image" else "no (image tower)"
            lines.append(f"| {modality} | {paired} | {'on' if cached else 'off'} | " + " | ".join(cells) + " |")
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


def _ask(pipe, question: str, vector: torch.Tensor, cache: CacheConfig) -> dict[str, str | None]:
    output = pipe(question, [InputItem("embedding", vector, name="query")], generation=GREEDY, cache=cache)
    return parse_answer(output.text)


def evaluate(pipe, entries: list[dict], modalities=("image", "video", "audio", "point", "depth"), mix_pairs: int = 48) -> Evaluation:
    """Run the table on `entries` (held-out manifest entries with all files). The pipeline's
    cache (if loaded) gives the "on" rows; without one only "off" rows are produced."""
    result = Evaluation(objects=len(entries))
    settings = [False] + ([True] if pipe.cache is not None else [])
    embeddings: dict[str, list[torch.Tensor]] = {}
    for modality in modalities:
        embeddings[modality] = [pipe.embed(InputItem(modality, entry["files"][modality])) for entry in entries]  # (E,) each
        for cached in settings:
            cache = CacheConfig(enabled=cached)
            hits = {a: 0 for a in OBSERVABLE[modality]}
            for entry, vector in zip(entries, embeddings[modality]):
                for attribute in hits:
                    hits[attribute] += _ask(pipe, EVAL_QUESTIONS[attribute], vector, cache)[attribute] == entry[attribute]
            result.rows[(modality, cached)] = {a: n / len(entries) for a, n in hits.items()}
            logger.info("%s cache %s: %s", modality, "on" if cached else "off", result.rows[(modality, cached)])
    if mix_pairs and {"image", "audio"} <= set(embeddings):
        result.mix = _arithmetic(pipe, entries, embeddings, mix_pairs)
    return result


def _arithmetic(pipe, entries: list[dict], embeddings: dict, pairs: int) -> dict[str, float]:
    rng = random.Random(0)
    index = list(range(len(entries)))
    chosen = []
    while len(chosen) < pairs:
        a, b = rng.sample(index, 2)
        if all(entries[a][k] != entries[b][k] for k in ATTRIBUTES):
            chosen.append((a, b))
    either = names_a = names_b = both = 0
    for a, b in chosen:
        mixed = embeddings["image"][a] + embeddings["audio"][b]  # equal weights; the pipeline renormalises
        said = [(k, _ask(pipe, EVAL_QUESTIONS[k], mixed, CacheConfig(enabled=False))[k]) for k in ATTRIBUTES]  # one question each
        either += sum(value in (entries[a][k], entries[b][k]) for k, value in said if k != "size") / 2
        of_a = any(value == entries[a][k] for k, value in said)
        of_b = any(value == entries[b][k] for k, value in said)
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
