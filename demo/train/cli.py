"""Train the ImageBind-LLM adapter: image features, stage 1, stage 2, export for the app.

Typical run (reference section 11; paths are examples):

  # 1. ImageBind features, once (resumable: run again after an interruption)
  python -m demo.train features --imagebind weights/downloads/imagebind_w3D.pth \\
      --captions data/cc3m.csv --instructions data/llava_instruct_150k.json --out runs/features
  # 2. Stage 1: bind network, prefix and gates on image-caption pairs
  python -m demo.train stage1 --base weights/downloads/llama-7b --delta weights/downloads/7B_chinese_delta \\
      --captions data/cc3m.csv --features runs/features --out runs/stage1 --batch-size 4 --grad-accum 16
  # 3. Stage 2: norms, biases and LoRA on instructions, starting from stage 1
  python -m demo.train stage2 --base ... --delta ... --init runs/stage1/adapter.pth \\
      --instructions data/alpaca_gpt4.json data/llava_instruct_150k.json --features runs/features --out runs/stage2
  # 4. A folder the pipeline and the app load (python app.py --weights runs/converted)
  python -m demo.train export --checkpoint runs/stage2 --base ... --delta ... --out runs/converted

Training resumes by itself when --out holds a checkpoint (same command again). Several processes
(GPUs, or CPU processes with gloo): `torchrun --nproc-per-node N -m demo.train stage1 ...`, where
--batch-size is per process (the global batch is batch x grad-accum x N; lr follows it). Every adapter it
writes (checkpoint-*/adapter.pth, adapter.pth) is in the released 7B.pth key layout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from ..errors import DemoError
from .data import BAD_DATA_POLICIES, IssueLog

logger = logging.getLogger("demo.train")
ENCODER_RECORD = "encoder.json"  # in the features folder: which ImageBind weights made them


def _data_args(parser: argparse.ArgumentParser, captions: bool, instructions: bool) -> None:
    group = parser.add_argument_group("data")
    if captions:
        group.add_argument("--captions", type=Path, nargs="+", default=[], metavar="FILE",
                           help="image-caption pairs: .csv with header image,caption or .jsonl {\"image\", \"caption\"}")
    if instructions:
        group.add_argument("--instructions", type=Path, nargs="+", default=[], metavar="FILE",
                           help="Alpaca and/or LLaVA records, .json (array) or .jsonl; text-only records use the blank image")
    group.add_argument("--image-root", type=Path, help="folder relative image paths start from (default: each data file's folder)")
    group.add_argument("--bad-data", choices=BAD_DATA_POLICIES, default="skip",
                       help="bad samples (malformed lines, empty captions, missing images): skip them and list them "
                            "in <out>/bad_data.jsonl, or stop at the first (default: %(default)s)")


def _base_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("base model")
    group.add_argument("--base", type=Path, required=required, help="base LLaMA folder (Meta or Hugging Face format)")
    group.add_argument("--delta", type=Path, help="Open-Chinese-LLaMA delta folder (Meta format), added to the base")
    group.add_argument("--tokenizer", type=Path, help="tokenizer.model, if not beside the base weights")


def _train_args(parser: argparse.ArgumentParser, stage: str) -> None:
    from .trainer import STAGE_DEFAULTS

    defaults = STAGE_DEFAULTS[stage]
    parser.add_argument("--features", type=Path, required=True, help="folder written by `features`")
    parser.add_argument("--out", type=Path, required=True, help="output folder: checkpoints, log, adapter.pth (resumes if present)")
    parser.add_argument("--init", type=Path, required=stage == "stage2",
                        help="adapter to start from (7B.pth layout)" + (": the stage-1 result" if stage == "stage2" else "; default: fresh"))
    group = parser.add_argument_group("optimisation")
    group.add_argument("--batch-size", type=int, default=4, help="samples per micro-batch, per process under torchrun (default: %(default)s)")
    group.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default: %(default)s)")
    group.add_argument("--epochs", type=int, default=1, help="(default: %(default)s)")
    group.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    group.add_argument("--base-lr", type=float, default=defaults["base_lr"],
                       help="lr per 256 samples; lr = base_lr * batch * grad_accum * processes / 256 (default: %(default)s)")
    group.add_argument("--lr", type=float, help="absolute peak lr, instead of the --base-lr rule")
    group.add_argument("--min-lr", type=float, default=0.0, help="lr at the end of the cosine (default: %(default)s)")
    group.add_argument("--weight-decay", type=float, default=defaults["weight_decay"], help="(default: %(default)s)")
    group.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default: %(default)s)")
    group.add_argument("--max-len", type=int, default=512, help="tokens per sample, prompt included (default: %(default)s)")
    group.add_argument("--seed", type=int, default=0, help="data order and fresh adapter init (default: %(default)s)")
    group.add_argument("--save-every", type=int, default=500, help="optimizer steps between checkpoints (default: %(default)s)")
    group.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                       help="auto: bf16 (or fp16) autocast on GPU, fp32 on CPU (default: %(default)s)")
    group.add_argument("--device", help="cuda, cuda:1, cpu (default: best available)")
    group = parser.add_argument_group("after training")
    group.add_argument("--convert", action="store_true", help="also write <out>/converted, the folder the pipeline and app load")
    group.add_argument("--imagebind", type=Path, help="ImageBind weights to record in the converted folder (default: those of --features)")


def build_parser() -> argparse.ArgumentParser:
    doc = sys.modules[__name__].__doc__
    parser = argparse.ArgumentParser(prog="python -m demo.train", description=doc.split("\n\n")[0],
                                     epilog=doc.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    features = commands.add_parser("features", help="compute ImageBind image features once (resumable)")
    features.add_argument("--imagebind", type=Path, required=True, help="imagebind_w3D.pth or imagebind_huge.pth")
    features.add_argument("--out", type=Path, required=True, help="features folder (created; reused and completed if present)")
    features.add_argument("--batch-size", type=int, default=32, help="images per encoder call (default: %(default)s)")
    features.add_argument("--device", help="cuda, cpu (default: best available)")
    _data_args(features, captions=True, instructions=True)

    stage1 = commands.add_parser("stage1", help="train bind network, prefix and gates on image-caption pairs")
    _base_args(stage1)
    _data_args(stage1, captions=True, instructions=False)
    _train_args(stage1, "stage1")

    stage2 = commands.add_parser("stage2", help="train norms, biases and LoRA on instruction data")
    _base_args(stage2)
    _data_args(stage2, captions=False, instructions=True)
    _train_args(stage2, "stage2")

    export = commands.add_parser("export", help="write the folder the pipeline and the app load, from a trained adapter")
    export.add_argument("--checkpoint", type=Path, required=True,
                        help="a training --out folder (its final adapter, else its latest checkpoint), a checkpoint-* folder or an adapter .pth")
    _base_args(export)
    export.add_argument("--out", type=Path, required=True, help="converted folder to write")
    export.add_argument("--imagebind", type=Path, help="ImageBind weights to record in the folder")
    export.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16", help="(default: %(default)s)")
    return parser


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _read_records(args: argparse.Namespace, issues: IssueLog) -> list:
    from .data import read_captions, read_instructions

    records = []
    for path in getattr(args, "captions", []):
        records += read_captions(path, issues, args.image_root)
    for path in getattr(args, "instructions", []):
        records += read_instructions(path, issues, args.image_root)
    return records


def run_features(args: argparse.Namespace) -> None:
    from ..encoders.encoder import MultimodalEncoder
    from ..model import resolve_device
    from .features import extract_features

    if not args.captions and not args.instructions:
        raise DemoError("give --captions and/or --instructions files whose images to encode")
    args.out.mkdir(parents=True, exist_ok=True)
    issues = IssueLog(args.bad_data, args.out / "bad_data.jsonl")
    images: dict[str, str] = {}
    for record in _read_records(args, issues):
        if record.image is not None:
            images.setdefault(str(record.image), record.where)
    encoder = MultimodalEncoder.from_pretrained(args.imagebind, device=resolve_device(args.device))
    record_path = args.out / ENCODER_RECORD
    if record_path.exists() and json.loads(record_path.read_text())["imagebind"] != str(args.imagebind.resolve()):
        raise DemoError(f"{args.out} holds features of {json.loads(record_path.read_text())['imagebind']}; use a new --out for other weights")
    record_path.write_text(json.dumps({"imagebind": str(args.imagebind.resolve()), "dim": encoder.config.out_dim}, indent=2))
    store = extract_features(images, encoder, args.out, issues, batch_size=args.batch_size, progress=not args.no_progress)
    logger.info("%d features in %s; %s", len(store), args.out, issues.summary())


def run_stage(args: argparse.Namespace) -> None:
    """One training stage; under torchrun, one of its processes (see demo/train/distributed.py)."""
    from ..model import resolve_device
    from .distributed import close_world, init_world

    world = init_world(resolve_device(args.device))
    if not world.is_main:  # one process speaks (the others' warnings still show)
        logging.getLogger().setLevel(logging.WARNING)
    try:
        _run_stage(args, world)
    finally:
        close_world(world)


def _run_stage(args: argparse.Namespace, world) -> None:
    from ..convert import MetaCheckpoint, build_tokenizer, convert, find_tokenizer, load_adapter_checkpoint, open_base
    from ..model import resolve_device
    from .adapter_model import AdapterModel
    from .data import tokenize_all
    from .distributed import local_device
    from .features import BLANK, FeatureStore
    from .trainer import TrainConfig, train

    # 1. Data: records, tokens, features (every process reads them; the main one writes the report)
    args.out.mkdir(parents=True, exist_ok=True)
    issues = IssueLog(args.bad_data, args.out / "bad_data.jsonl" if world.is_main else None)
    records = _read_records(args, issues)
    store = FeatureStore(args.features)
    if BLANK not in store:
        raise DemoError(f"{args.features} holds no features: run `python -m demo.train features ... --out {args.features}` first")
    usable = []
    for record in records:
        if record.image is not None and str(record.image) not in store:
            issues.report(record.where, f"no feature for {record.image}: run `features` on this data file first")
        else:
            usable.append(record)
    tokenizer_path = find_tokenizer(args.base, args.tokenizer)
    tokenizer = build_tokenizer(tokenizer_path)  # SentencePiece's ids, as the original trains with
    samples = tokenize_all(usable, tokenizer, args.max_len, issues)
    logger.info("%d samples; %s", len(samples), issues.summary())

    # 2. Model: frozen base + adapter (fresh or --init)
    device = local_device(resolve_device(args.device), world)
    base_dtype = torch.float32 if device.type != "cuda" or args.precision == "fp32" else torch.float16 if args.precision == "fp16" else torch.bfloat16
    embed_dim = store.get([BLANK]).shape[1]
    delta = MetaCheckpoint(args.delta) if args.delta else None
    model = AdapterModel.from_base(open_base(args.base), embed_dim, delta=delta, dtype=base_dtype, device=device, seed=args.seed)
    if args.init:
        fresh = model.load_official(load_adapter_checkpoint(args.init), allow_stage1_only=args.command == "stage2")
        if fresh:
            logger.warning("%s holds stage-1 weights only: %d LLaMA-side adapter tensors start fresh", args.init, len(fresh))

    # 3. Train (resumes from --out if it holds a checkpoint)
    config = TrainConfig(
        stage=args.command, batch_size=args.batch_size, grad_accum=args.grad_accum, epochs=args.epochs, max_steps=args.max_steps,
        base_lr=args.base_lr, lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        seed=args.seed, save_every=args.save_every, precision=args.precision, progress=not args.no_progress,
    )
    final = train(model, samples, store, config, args.out, world=world)
    logger.info("adapter (7B.pth layout): %s; loss log: %s", final, args.out / "log.jsonl")

    # 4. Optionally the folder the pipeline loads
    if args.convert and world.is_main:
        imagebind = args.imagebind or _features_imagebind(args.features)
        folder = convert(args.base, final, args.out / "converted", delta=args.delta, tokenizer=args.tokenizer, imagebind=imagebind,
                         progress=not args.no_progress)
        logger.info("pipeline folder: %s (python app.py --weights %s)", folder, folder)


def _features_imagebind(features: Path) -> Path | None:
    record = features / ENCODER_RECORD
    return Path(json.loads(record.read_text())["imagebind"]) if record.exists() else None


def resolve_adapter(path: Path) -> Path:
    """A training folder, a checkpoint folder or a .pth -> the adapter file it stands for."""
    from .trainer import FINAL_ADAPTER, latest_checkpoint

    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / FINAL_ADAPTER, (latest_checkpoint(path) or path) / "adapter.pth"):
        if candidate.is_file():
            return candidate
    raise DemoError(f"{path}: no adapter found (expected {FINAL_ADAPTER}, a checkpoint folder or a .pth file)")


def run_export(args: argparse.Namespace) -> None:
    from ..convert import convert

    adapter = resolve_adapter(args.checkpoint)
    folder = convert(args.base, adapter, args.out, delta=args.delta, tokenizer=args.tokenizer, imagebind=args.imagebind,
                     dtype=getattr(torch, args.dtype), progress=not args.no_progress)
    logger.info("exported %s -> %s (python app.py --weights %s)", adapter, folder, folder)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = {"features": run_features, "stage1": run_stage, "stage2": run_stage, "export": run_export}[args.command]
    try:
        command(args)
    except (DemoError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
