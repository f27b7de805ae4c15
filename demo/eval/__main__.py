"""python -m demo.eval: run a benchmark on a loadable model, resumably, and write its scores.

  python -m demo.eval mme --data MME_Benchmark_release_version             # MME, pocket model
  python -m demo.eval mme --data ... --model weights/converted/7B --limit 5
  python -m demo.eval captions --data clotho.jsonl --model tiny             # BLEU / CIDEr
  python -m demo.eval pocket                                                # the README's pocket table

Writes <out>/answers.jsonl (every answer, the resume cache), <out>/scores.json and
<out>/scores.md; a second run with the same settings generates nothing new. docs/evaluation.md
has the data formats, where to get MME, and the lmms-eval / VLMEvalKit wrappers.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

from ..cache import RetrievalSettings
from ..config import GenerationConfig
from ..pipeline import PRESETS
from . import captions, mme, pocket
from .runner import Runner, RunSettings, settings_dict, write_scores

# benchmark -> (max_new_tokens, cache rows) defaults: yes/no answers are short, captions a sentence;
# the pocket table has cache-off and cache-on rows.
DEFAULTS = {"mme": (16, "off"), "captions": (64, "off"), "pocket": (pocket.GREEDY.max_new_tokens, "both")}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo.eval", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    model = common.add_argument_group("model")
    model.add_argument("--model", default="pocket", help="a converted folder, or a preset: %s (default: %%(default)s)" % ", ".join(PRESETS))
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    model.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: the folder's)")
    model.add_argument("--quantization", choices=("8bit", "4bit"), help="load LLaMA quantized (bitsandbytes)")
    model.add_argument("--imagebind", type=Path, help="ImageBind weights when the folder records none")
    run = common.add_argument_group("run")
    run.add_argument("--out", type=Path, help="results folder (default: eval-results/<benchmark>-<model>)")
    run.add_argument("--limit", type=int, help="MME: images per subtask; captions: samples; pocket: held-out objects")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    gen = common.add_argument_group("generation (default greedy)")
    gen.add_argument("--max-new-tokens", type=int, help="per answer (default: mme 16, captions 64, pocket 24)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default: %(default)s)")
    gen.add_argument("--top-p", type=float, default=GenerationConfig.top_p, help="(default: %(default)s)")
    gen.add_argument("--seed", type=int, help="sampling seed (temperature > 0)")
    cache = common.add_argument_group("visual cache")
    cache.add_argument("--cache", choices=("off", "on", "both"), help="answer without / with the cache, or both (pocket rows; "
                       "default: pocket both, others off)")
    cache.add_argument("--cache-index", type=Path, help="faiss index (default: the model folder's cache.index)")
    cache.add_argument("--cache-k", type=int, default=RetrievalSettings.k, help="neighbours (default: %(default)s)")
    cache.add_argument("--cache-temperature", type=float, default=RetrievalSettings.temperature, help="(default: %(default)s)")
    cache.add_argument("--cache-weight", type=float, default=RetrievalSettings.weight, help="(default: %(default)s)")

    commands = parser.add_subparsers(dest="benchmark", required=True)
    m = commands.add_parser("mme", parents=[common], help="MME yes/no benchmark (perception + cognition)")
    m.add_argument("--data", type=Path, required=True, help="MME_Benchmark_release_version folder (docs/evaluation.md)")
    m.add_argument("--mme-list", type=Path, help="eval_tool/Your_Results folder: the official question lists (optional)")
    m.add_argument("--suffix", default=mme.OFFICIAL_SUFFIX, help="replaces the questions' ending (default: %(default)r; '' for none)")
    m.add_argument("--subtasks", nargs="+", choices=mme.SUBTASKS, default=list(mme.SUBTASKS), metavar="NAME", help="default: all 14")
    c = commands.add_parser("captions", parents=[common], help="caption JSONL (any modality): BLEU-1..4, CIDEr")
    c.add_argument("--data", type=Path, required=True, help="JSONL of {id, modality, file, captions} (docs/evaluation.md)")
    c.add_argument("--question", help="prompt for every sample (default: 'Describe this <image/sound/...> in one sentence.')")
    p = commands.add_parser("pocket", parents=[common], help="the pocket world's table (per modality, cache off/on, arithmetic)")
    p.add_argument("--world", type=Path, help="world folder; generated when missing (about 1 min on 2 idle cores) (default: the build's)")
    p.add_argument("--modalities", nargs="+", choices=pocket.MODALITIES, default=list(pocket.MODALITIES))
    p.add_argument("--mix-pairs", type=int, default=48, help="arithmetic mixes, 0 for none (default: %(default)s)")
    return parser


def _model_name(model: str) -> str:
    return model if model in PRESETS else str(Path(model).resolve())


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model if model in PRESETS else Path(model).resolve().name).strip("-") or "model"


def load_pipeline(args, want_cache: bool):
    from ..errors import InputError
    from ..pipeline import ImageBindLLMPipeline
    from ..presets import resolve

    index = args.cache_index
    if want_cache and index is None:
        folder = resolve(args.model)  # a preset's folder (tiny: built on first use) or the folder given
        if (folder / "cache.index").is_file():
            index = folder / "cache.index"
        else:
            raise InputError(f"--cache {args.cache} needs a visual cache index: pass --cache-index (none in {folder})")
    return ImageBindLLMPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype, quantization=args.quantization,
                                                cache_path=index if want_cache else None, imagebind_path=args.imagebind)


def main(argv: list[str] | None = None) -> int:
    from ..errors import DemoError

    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tokens, cache_rows = DEFAULTS[args.benchmark]
    args.cache = args.cache or cache_rows
    if args.cache == "both" and args.benchmark != "pocket":
        parser.error("--cache both makes two rows per task, which only the pocket table has: use --cache on or off")
    try:
        return _run(args, tokens)
    except DemoError as exc:  # a bad data folder, a missing cache index...: the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args, tokens: int) -> int:
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens or tokens, temperature=args.temperature, top_p=args.top_p,
                                  seed=args.seed).check()
    cache = RetrievalSettings(enabled=args.cache == "on", k=args.cache_k, temperature=args.cache_temperature, weight=args.cache_weight).check()
    out = args.out or Path("eval-results") / f"{args.benchmark}-{_slug(args.model)}"
    began = time.perf_counter()

    if args.benchmark == "mme":
        samples = mme.load(args.data, listing=args.mme_list, suffix=args.suffix, subtasks=tuple(args.subtasks), limit=args.limit)
    elif args.benchmark == "captions":
        samples = captions.load(args.data, question=args.question, limit=args.limit)
    else:
        entries = _pocket_entries(args.world, args.limit)

    pipe = load_pipeline(args, want_cache=args.cache != "off")
    settings = RunSettings(model=_model_name(args.model), generation=generation, cache=cache)
    runner = Runner(pipe, out, settings, progress=not args.no_progress)

    if args.benchmark == "mme":
        records = runner.answer_all(samples, desc="MME")
        scores = mme.score(records)
        markdown = mme.table(scores)
        mme.write_official_results(records, out)
    elif args.benchmark == "captions":
        records = runner.answer_all(samples, desc="captions")
        scores = captions.score(records)
        markdown = captions.table(scores)
    else:
        rows = {"off": [False], "on": [True], "both": [False, True]}[args.cache]
        # pocket rows carry their own cache setting: the run's k / temperature / weight apply to "on"
        result = pocket.run(runner, entries, tuple(args.modalities), args.mix_pairs, rows, cache_on=cache)
        scores = result.numbers()
        markdown = ("Answers of the pocket model (pipeline)\n\n" + result.table() + "\n\nREADME table\n\n" + result.readme_table())
    seconds = time.perf_counter() - began
    scores = {"benchmark": args.benchmark, **scores, "settings": settings_dict(settings), "generated": runner.generated,
              "answers_on_file": runner.stored, "seconds": round(seconds, 1)}
    markdown += f"\n\nModel {settings.model}; {runner.generated} answers generated, the rest read from {runner.path}; {seconds:.0f} s."
    json_path, md_path = write_scores(out, scores, markdown)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


def _pocket_entries(world: Path | None, limit: int | None) -> list[dict]:
    from ..world.__main__ import WORK
    from ..world.build import Recipe
    from ..world.scene import generate_world, read_world

    from ..world.scene import MANIFEST

    if world is None or not (world / MANIFEST).is_file():
        world = world or WORK / "world"
        generate_world(world, Recipe().world)  # the default world; a no-op when the folder holds it
    return read_world(world, "test")[:limit]


if __name__ == "__main__":
    sys.exit(main())
