"""The whole pocket-world recipe, one function: world -> encoder -> LLaMA -> adapter -> folder.

    work/world/            the generated world (objects/, world.jsonl)
    work/llama/            micro LLaMA, Meta format (params.json, consolidated.00.pth, tokenizer.model)
    work/data/             captions.csv (stage 1), instructions.jsonl (stage 2)
    work/features/, work/stage1/, work/stage2/   `python -m demo.train` outputs
    work/encoder/          micro ImageBind (imagebind_w3D.pth, encoder_config.json)
    work/pocket/           THE result, the folder the pipeline loads: llm/, adapter.safetensors,
                           imagebind_llm.json, imagebind_w3D.pth + encoder_config.json (micro
                           ImageBind), cache.index (+ sidecar: the training images),
                           image_decoder/ (demo.imagine.pocket), examples/, evaluation.md

Steps 5-8 call the project's training command (`demo.train.cli.main`) with ordinary arguments:
stage 1 sees image-caption pairs only; stage 2 instructions about images, depth maps and point
clouds (those two so that it learns what they cannot show), single- and multi-turn, whose depth
and point features `add_features` adds to the features folder. Sounds are never paired with text.
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
from ..imagine.pocket import DecoderTraining
from .encoder import WEIGHTS_NAME, EncoderTraining, retrieval_accuracy, train_encoder
from .language import STAGE2_MODALITIES, LlamaTraining, train_llama, write_training_data
from .scene import WorldSpec, generate_world, read_world

logger = logging.getLogger(__name__)
CACHE_NAME = "cache.index"
NOTICE = (
    "**Pocket world model.** No real weights were found, so this server runs the *pocket* model: a micro "
    "ImageBind and a micro LLaMA (16 MB in all) trained on CPU on a procedural world of cubes, spheres, cones and "
    "cylinders in six colours and two sizes. It answers questions about such objects, from an image, a video, "
    "a sound, a point cloud or a depth map (the `World:` examples), follow-up questions included, says what an "
    "input cannot show, draws what it sees (image output), and knows nothing else. Sounds were never paired with "
    "text. See docs/pocket_world.md; for the real model, see README, section **Weights**."
)


@dataclass
class Recipe:
    world: WorldSpec = field(default_factory=WorldSpec)
    encoder: EncoderTraining = field(default_factory=EncoderTraining)
    llama: LlamaTraining = field(default_factory=LlamaTraining)
    stage1_steps: int = 300
    stage2_steps: int = 450
    batch_size: int = 32
    stage1_lr: float = 3e-3
    stage2_lr: float = 2e-3
    eval_objects: int | None = None  # held-out objects in the table (None: all)
    eval_modalities: tuple[str, ...] = ("image", "video", "audio", "point", "depth")
    mix_pairs: int = 48
    decoder: DecoderTraining = field(default_factory=DecoderTraining)
    decoder_side: int = 32  # pixels of the decoder's pictures (and of its targets)
    extra_eval_objects: int | None = 96  # held-out objects in the conversation and image-decoder tables (None: all)

    @classmethod
    def quick(cls) -> "Recipe":
        """A shortened recipe for the test: small world, few steps (about 2 minutes on 2 cores)."""
        return cls(
            world=WorldSpec(seed=0, train=192, test=24),
            encoder=EncoderTraining(text_steps=60, bind_steps=60, batch_size=48),
            llama=LlamaTraining(steps=160),
            stage1_steps=80, stage2_steps=100, eval_objects=24, eval_modalities=("image", "audio"), mix_pairs=0,
            decoder=DecoderTraining(steps=150), extra_eval_objects=24,
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

    # 4. Visual cache of the training images (it needs the encoder only)
    build_cache(folder, work / "world", train)
    lap("cache")

    # 5-8. The project's training command: features, stage 1 (captions), stage 2 (instructions), export
    captions, instructions = write_training_data(train, work / "data", recipe.world.seed)
    features, stage1, stage2 = work / "features", work / "stage1", work / "stage2"
    for old in (features, stage1, stage2):
        shutil.rmtree(old, ignore_errors=True)
    # The images of both stages are the captions' images; depth and point features are added apart.
    _train("features", "--imagebind", str(imagebind), "--captions", str(captions), "--out", str(features))
    add_features(features, folder, train)
    common = ["--base", str(llama), "--features", str(features), "--batch-size", str(recipe.batch_size), "--warmup-steps", "20",
              "--save-every", "100000", "--seed", str(recipe.world.seed)]
    _train("stage1", *common, "--captions", str(captions), "--out", str(stage1), "--max-steps", str(recipe.stage1_steps),
           "--lr", str(recipe.stage1_lr))
    _train("stage2", *common, "--instructions", str(instructions), "--init", str(stage1 / "adapter.pth"), "--out", str(stage2),
           "--max-steps", str(recipe.stage2_steps), "--lr", str(recipe.stage2_lr))
    _train("export", "--checkpoint", str(stage2), "--base", str(llama), "--imagebind", str(imagebind), "--out", str(folder),
           "--dtype", "float16")
    lap("adapter")

    # 9. Image decoder (image output offline), examples, notice
    train_image_decoder(folder, train, recipe.decoder, recipe.decoder_side)
    write_examples(folder / "examples", test)
    meta = json.loads((folder / CONFIG_NAME).read_text())
    meta["notice"] = NOTICE
    meta["image_decoder"] = DECODER_DIR
    meta["sources"] = {"recipe": "python -m demo.world build", "world_seed": recipe.world.seed}
    (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    lap("decoder")

    # 10. Evaluation
    report, numbers = evaluate_folder(folder, test[: recipe.eval_objects], train, recipe.eval_modalities, recipe.mix_pairs,
                                      extra_objects=recipe.extra_eval_objects)
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


def add_features(features: Path, folder: Path, entries: list[dict]) -> int:
    """Stage 2's depth-map and point-cloud vectors, appended to the features folder that
    `python -m demo.train features` wrote (its layout: demo/train/features.py), keyed by the
    file's path as the instruction records name it. Not blended with the visual cache: a first
    build that blended every second one (as the app does with its cache on), with more depth and
    point records than now, made the model say "I cannot tell the colour" about 20% of images."""
    from ..encoders.encoder import MultimodalEncoder
    from ..inputs.registry import load_input
    from ..train.features import INDEX_NAME, FeatureStore

    encoder = MultimodalEncoder.from_pretrained(folder / WEIGHTS_NAME, device="cpu")
    keys, vectors = [], []
    for modality in (m for m in STAGE2_MODALITIES if m != "image"):
        samples = torch.stack([load_input(modality, e["files"][modality]) for e in entries])  # (N, *sample_shape)
        units = torch.nn.functional.normalize(encoder.encode_batch(modality, samples), dim=-1)  # (N, E), as pipeline.embed
        keys += [str(Path(e["files"][modality]).resolve()) for e in entries]
        vectors.append(units)
    shard = FeatureStore(features).next_shard
    np.save(features / f"shard-{shard:05d}.npy", torch.cat(vectors).numpy().astype(np.float32))
    with (features / INDEX_NAME).open("a") as index:
        index.writelines(json.dumps({"key": k, "shard": shard, "row": i}) + "\n" for i, k in enumerate(keys))
    return len(keys)


DECODER_DIR = "image_decoder"  # in the pocket folder; imagebind_llm.json's "image_decoder" entry
DECODER_MODALITIES = ("image", "audio", "depth", "point")  # the decoder learns to draw from each


def world_images(entries: list[dict], side: int) -> torch.Tensor:
    """The objects' images at `side` pixels (box-filtered), (N, 3, side, side) in [0, 1]."""
    from PIL import Image

    def one(entry: dict) -> torch.Tensor:
        with Image.open(entry["files"]["image"]) as image:
            pixels = np.asarray(image.convert("RGB").resize((side, side), Image.BOX))  # (side, side, 3) uint8
        return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255

    return torch.stack([one(e) for e in entries])


def train_image_decoder(folder: Path, entries: list[dict], config: DecoderTraining, side: int) -> Path:
    """demo.imagine.pocket's decoder on the training objects: from the PRE-normalisation
    embedding of each object's image, sound, depth map and point cloud (what
    `pipeline.image_embedding` gives; the decoder keeps the direction) to its image."""
    from ..encoders.encoder import MultimodalEncoder
    from ..imagine.pocket import train_decoder
    from ..inputs.registry import load_input

    encoder = MultimodalEncoder.from_pretrained(folder / WEIGHTS_NAME, device="cpu")
    vectors = torch.cat([
        encoder.encode_batch(m, torch.stack([load_input(m, e["files"][m]) for e in entries]), normalised=False)
        for m in DECODER_MODALITIES
    ])  # (M * N, E)
    images = world_images(entries, side).repeat(len(DECODER_MODALITIES), 1, 1, 1)  # (M * N, 3, side, side)
    return train_decoder(vectors, images, config).save_pretrained(folder / DECODER_DIR)


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
    folder: Path, test: list[dict], train: list[dict], modalities: tuple[str, ...] = Recipe.eval_modalities, mix_pairs: int = 48,
    extra_objects: int | None = Recipe.extra_eval_objects,
) -> tuple[str, dict]:
    """Encoder retrieval check + the pipeline table + conversations + image decoder:
    (markdown, the same numbers as a dict)."""
    from ..encoders.encoder import MultimodalEncoder
    from ..eval.pocket import dialogue_table, dialogues
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
    talk_modalities = tuple(dict.fromkeys((*modalities, *(m for m in STAGE2_MODALITIES if m != "image"))))
    talk = dialogues(pipe, test[:extra_objects], talk_modalities)
    pictures = evaluate_decoder(pipe, encoder, test[:extra_objects], train)
    numbers = {"retrieval": retrieval, "answers": {f"{m} cache {'on' if c else 'off'}": row for (m, c), row in result.rows.items()},
               "mix": result.mix, "dialogues": talk, "image_decoder": pictures}
    return ("\n".join(lines) + "\n\nAnswers of the pocket model (pipeline, greedy)\n\n" + result.table()
            + "\n\nConversations: follow-up questions, and what an input cannot show\n\n" + dialogue_table(talk)
            + "\n\nImage output offline (the image decoder, demo/imagine/pocket.py)\n\n" + decoder_table(pictures)), numbers


PICTURE_MODALITIES = ("image", "audio", "point")


def evaluate_decoder(pipe, encoder, test: list[dict], train: list[dict], modalities: tuple[str, ...] = PICTURE_MODALITIES) -> dict:
    """`pipe.imagine` (seed 0) for each held-out object from one input of each modality, cache off
    and on; a picture is recognised as the right shape / colour / size when its nearest training
    IMAGE (micro ImageBind, as the encoder check) has that value. Also the seconds per picture
    (the decoder alone, and `imagine` with the input's encoding)."""
    from ..cache import RetrievalSettings
    from ..imagine import ImageSettings
    from ..inputs.registry import load_input
    from ..pipeline import InputItem

    gallery = torch.nn.functional.normalize(
        encoder.encode_batch("image", torch.stack([load_input("image", e["files"]["image"]) for e in train])), dim=-1)  # (G, E)
    rows, imagining, vectors = {}, [], []
    for modality in modalities:
        for cached in (False, True):
            pictures = []
            for entry in test:
                began = time.perf_counter()
                out = pipe.imagine([InputItem(modality, entry["files"][modality])], seed=0, cache=RetrievalSettings(enabled=cached))
                imagining.append(time.perf_counter() - began)
                pictures.append(load_input("image", out.image))
                vectors.append(out.embedding)
            query = torch.nn.functional.normalize(encoder.encode_batch("image", torch.stack(pictures)), dim=-1)  # (Q, E)
            nearest = (query @ gallery.T).argmax(1)
            rows[f"{modality} cache {'on' if cached else 'off'}"] = {
                a: sum(e[a] == train[int(j)][a] for e, j in zip(test, nearest)) / len(test) for a in ("shape", "colour", "size")}
    decoding = []
    for vector in vectors[:32]:  # the decoder alone, on vectors already made
        began = time.perf_counter()
        pipe.image_generator.generate(vector, ImageSettings(seed=0))
        decoding.append(time.perf_counter() - began)
    side = pipe.image_generator.net.config.side
    return {"objects": len(test), "rows": rows, "side": side, "decoder_seconds": float(np.mean(decoding)),
            "imagine_seconds": float(np.mean(imagining))}


def decoder_table(numbers: dict) -> str:
    from .scene import OBSERVABLE

    names = ("shape", "colour", "size")
    lines = ["| picture drawn from | visual cache | " + " | ".join(names) + " |", "|---|---|---|---|---|"]
    for key, row in numbers["rows"].items():
        modality, _, setting = key.split(" ")
        cells = [f"{100 * row[a]:.0f}%" + ("" if a in OBSERVABLE[modality] else " (not in the input)") for a in names]
        lines.append(f"| {modality} | {setting} | " + " | ".join(cells) + " |")
    lines.append("| chance | | 25% | 17% | 50% |")
    return "\n".join(lines) + (
        f"\n\n{numbers['objects']} held-out objects per row; pictures of {numbers['side']} px, seed 0, noise level 0. A picture "
        "counts when its nearest training image (micro ImageBind) has the object's value; held-out photos themselves "
        "score as the encoder check's image row. CPU time per picture: "
        f"{1000 * numbers['decoder_seconds']:.0f} ms for the decoder, {numbers['imagine_seconds']:.2f} s for "
        "`pipe.imagine` with the input's encoding (2 shared CPU cores)."
    )
