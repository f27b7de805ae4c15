"""The whole pocket-world recipe, one function: world -> encoder -> LLaMA -> adapter -> folder.

    work/world/            the generated world (objects/, world.jsonl)
    work/llama/            micro LLaMA, Meta format (params.json, consolidated.00.pth, tokenizer.model)
    work/data/             captions.csv (stage 1), instructions.jsonl (stage 2)
    work/features/, work/stage1/, work/stage2/   `python -m demo.train` outputs
    work/encoder/          micro ImageBind (imagebind_w3D.pth, encoder_config.json)
    work/pocket/           THE result, the folder the pipeline loads: llm/, adapter.safetensors,
                           imagebind_llm.json, imagebind_w3D.pth + encoder_config.json (micro
                           ImageBind), cache.index (+ sidecar: the training images), examples/,
                           evaluation.md

Steps 4-7 call the project's training command (`demo.train.cli.main`) with ordinary arguments:
stage 1 sees image-caption pairs only, stage 2 image instructions only.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..convert import CONFIG_NAME
from ..encoders.encoder import CONFIG_FILENAME
from .encoder import WEIGHTS_NAME, EncoderTraining, retrieval_accuracy, train_encoder
from .language import LlamaTraining, train_llama, write_training_data
from .scene import WorldSpec, generate_world, read_world

logger = logging.getLogger(__name__)
CACHE_NAME = "cache.index"
NOTICE = (
    "**Pocket world model.** No real weights were found, so this server runs the *pocket* model: a micro "
    "ImageBind and a micro LLaMA (16 MB in all) trained on CPU on a procedural world of cubes, spheres, cones and "
    "cylinders in six colours and two sizes. It answers questions about such objects, from an image, a video, "
    "a sound, a point cloud or a depth map (the `World:` examples), and knows nothing else. Only images were "
    "ever paired with text. See docs/pocket_world.md; for the real model, see README, section **Weights**."
)


@dataclass
class Recipe:
    world: WorldSpec = field(default_factory=WorldSpec)
    encoder: EncoderTraining = field(default_factory=EncoderTraining)
    llama: LlamaTraining = field(default_factory=LlamaTraining)
    stage1_steps: int = 300
    stage2_steps: int = 300
    batch_size: int = 32
    stage1_lr: float = 3e-3
    stage2_lr: float = 2e-3
    eval_objects: int | None = None  # held-out objects in the table (None: all)
    eval_modalities: tuple[str, ...] = ("image", "video", "audio", "point", "depth")
    mix_pairs: int = 48

    @classmethod
    def quick(cls) -> "Recipe":
        """A shortened recipe for the test: small world, few steps (about 2 minutes on 2 cores)."""
        return cls(
            world=WorldSpec(seed=0, train=192, test=24),
            encoder=EncoderTraining(text_steps=60, bind_steps=60, batch_size=48),
            llama=LlamaTraining(steps=120),
            stage1_steps=80, stage2_steps=80, eval_objects=24, eval_modalities=("image", "audio"), mix_pairs=0,
        )


def _train(*argv: str) -> None:
    from ..train.cli import main

    if main(["--no-progress", *argv]) != 0:
        raise RuntimeError(f"python -m demo.train {' '.join(argv)} failed")


def build(work: Path, recipe: Recipe = Recipe()) -> Path:
    """Run every step into `work`; returns the finished folder (work/pocket)."""
    work = Path(work)
    times: dict[str, float] = {}
    began = time.perf_counter()

    def lap(name: str) -> None:
        times[name] = round(time.perf_counter() - began - sum(times.values()), 1)
        logger.info("== %s done in %.0f s", name, times[name])

    # 1. The world
    generate_world(work / "world", recipe.world)
    train, test = read_world(work / "world", "train"), read_world(work / "world", "test")
    lap("world")

    # 2. Micro ImageBind, copied into the result folder (the folder records it by relative path)
    encoder_dir = work / "encoder"
    if not _done(encoder_dir, recipe.encoder):
        train_encoder(train, encoder_dir, recipe.encoder)
        _mark_done(encoder_dir, recipe.encoder)
    folder = work / "pocket"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in (WEIGHTS_NAME, CONFIG_FILENAME):
        shutil.copy(encoder_dir / name, folder / name)
    imagebind = folder / WEIGHTS_NAME
    lap("encoder")

    # 3. Micro LLaMA (Meta format) on the world's texts
    llama = work / "llama"
    if not _done(llama, recipe.llama):
        train_llama(train, llama, recipe.llama)
        _mark_done(llama, recipe.llama)
    lap("llama")

    # 4-7. The project's training command: features, stage 1 (captions), stage 2 (instructions), export
    captions, instructions = write_training_data(train, work / "data")
    features, stage1, stage2 = work / "features", work / "stage1", work / "stage2"
    for old in (features, stage1, stage2):
        shutil.rmtree(old, ignore_errors=True)
    _train("features", "--imagebind", str(imagebind), "--captions", str(captions), "--instructions", str(instructions), "--out", str(features))
    common = ["--base", str(llama), "--features", str(features), "--batch-size", str(recipe.batch_size), "--warmup-steps", "20",
              "--save-every", "100000", "--seed", str(recipe.world.seed)]
    _train("stage1", *common, "--captions", str(captions), "--out", str(stage1), "--max-steps", str(recipe.stage1_steps),
           "--lr", str(recipe.stage1_lr))
    _train("stage2", *common, "--instructions", str(instructions), "--init", str(stage1 / "adapter.pth"), "--out", str(stage2),
           "--max-steps", str(recipe.stage2_steps), "--lr", str(recipe.stage2_lr))
    _train("export", "--checkpoint", str(stage2), "--base", str(llama), "--imagebind", str(imagebind), "--out", str(folder),
           "--dtype", "float16")
    lap("adapter")

    # 8. Visual cache of the training images, examples, notice
    build_cache(folder, work / "world", train)
    write_examples(folder / "examples", test)
    meta = json.loads((folder / CONFIG_NAME).read_text())
    meta["notice"] = NOTICE
    meta["sources"] = {"recipe": "python -m demo.world build", "world_seed": recipe.world.seed}
    (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    lap("cache")

    # 9. Evaluation
    report, numbers = evaluate_folder(folder, test[: recipe.eval_objects], train, recipe.eval_modalities, recipe.mix_pairs)
    lap("evaluation")
    report += "\n\nBuild times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + f", total {sum(times.values()):.0f}"
    (folder / "evaluation.md").write_text(report + "\n")
    (folder / "evaluation.json").write_text(json.dumps({**numbers, "seconds": times}, indent=2))
    print(report)
    return folder


def _done(folder: Path, config) -> bool:
    """Whether `folder` holds the finished output of this exact config (steps 2-3 are skipped then)."""
    record = folder / "done.json"
    return record.exists() and json.loads(record.read_text()) == asdict(config)


def _mark_done(folder: Path, config) -> None:
    (folder / "done.json").write_text(json.dumps(asdict(config)))


def build_cache(folder: Path, world: Path, entries: list[dict]) -> Path:
    """`demo.weights_tools.cache.build_from_images` over the training images; sources are names
    relative to the world folder, so the shipped sidecar names no machine's paths."""
    from ..weights_tools.cache import build_from_images
    from ..encoders.encoder import MultimodalEncoder
    from ..inputs.registry import load_input

    encoder = MultimodalEncoder.from_pretrained(folder / WEIGHTS_NAME, device="cpu")
    world = Path(world).resolve()

    def encode(names: list[str]) -> np.ndarray:
        samples = torch.stack([load_input("image", world / name) for name in names])  # (n, 3, 224, 224)
        return encoder.encode_batch("image", samples).numpy()  # (n, E)

    names = [str(Path(e["files"]["image"]).relative_to(world)) for e in entries]
    return build_from_images(names, encode, folder / CACHE_NAME, dim=encoder.config.out_dim, progress=False)


EXAMPLE_OBJECTS = 3  # held-out objects copied into examples/, every modality each


def write_examples(out: Path, entries: list[dict]) -> None:
    """The first held-out objects in every modality, as world-<n>.<suffix> (+ the caption as text)."""
    out.mkdir(parents=True, exist_ok=True)
    for n, entry in enumerate(entries[:EXAMPLE_OBJECTS]):
        for modality, path in entry["files"].items():
            suffix = ".depth.png" if modality == "depth" else Path(path).suffix
            shutil.copy(path, out / f"world-{n}{suffix}")
        (out / f"world-{n}.txt").write_text(entry["caption"] + "\n")
    (out / "objects.json").write_text(json.dumps([{k: e[k] for k in ("caption", "shape", "colour", "size")} for e in entries[:EXAMPLE_OBJECTS]], indent=2))


def evaluate_folder(
    folder: Path, test: list[dict], train: list[dict], modalities: tuple[str, ...] = Recipe.eval_modalities, mix_pairs: int = 48
) -> tuple[str, dict]:
    """Encoder retrieval check + the pipeline table: (markdown, the same numbers as a dict)."""
    from ..encoders.encoder import MultimodalEncoder
    from ..pipeline import ImageBindLLMPipeline
    from .evaluate import evaluate

    encoder = MultimodalEncoder.from_pretrained(Path(folder) / WEIGHTS_NAME, device="cpu")
    retrieval = retrieval_accuracy(encoder, test, train)
    lines = ["Encoder check: nearest training IMAGE to each held-out query has the same attribute value", "",
             "| query | " + " | ".join(("shape", "colour", "size")) + " |", "|---|---|---|---|"]
    for modality, accuracy in retrieval.items():
        lines.append(f"| {modality} | " + " | ".join(f"{100 * accuracy[a]:.0f}%" if a in accuracy else "–" for a in ("shape", "colour", "size")) + " |")
    pipe = ImageBindLLMPipeline.from_pretrained(folder, device="cpu", cache_path=Path(folder) / CACHE_NAME)
    result = evaluate(pipe, test, modalities, mix_pairs=mix_pairs)
    numbers = {"retrieval": retrieval, "answers": {f"{m} cache {'on' if c else 'off'}": row for (m, c), row in result.rows.items()},
               "mix": result.mix}
    return "\n".join(lines) + "\n\nAnswers of the pocket model (pipeline, greedy)\n\n" + result.table(), numbers
