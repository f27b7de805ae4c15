"""The training loop: AdamW, warm-up + half-cycle cosine, accumulation, checkpoints, resume.

Reference section 11: loss on response tokens (+EOS) only; AdamW betas (0.9, 0.95); no weight
decay on 1-d parameters and biases; lr = base_lr * batch / 256 (batch = micro-batch x
accumulation); linear warm-up then half-cycle cosine; mixed precision on GPU.

Data order is a function of (seed, epoch) alone, and nothing else in the loop is random, so the
global optimizer step is the whole position: a run resumed from the checkpoint of step k replays
steps k+1... exactly as an uninterrupted run does (the test checks bit-for-bit equality).

Several processes (torchrun, `demo.train.distributed.World`): each optimizer step's samples are
the same global draw, split between the processes; each process runs `grad_accum` micro-batches
of `batch_size` of its share and PyTorch's DistributedDataParallel averages the gradients, so a
step's gradient is that of one big batch of batch_size x grad_accum x processes (the loss curve
of one process with that batch). Only the main process (rank 0) writes files.

Output folder:
    checkpoint-<step>/adapter.pth     the adapter in the official 7B.pth layout ({'model': ...})
    checkpoint-<step>/trainer.pt      optimizer, grad scaler, step, settings (to resume)
    latest                            name of the newest complete checkpoint (replaced atomically)
    adapter.pth                       the final adapter (7B.pth layout), when training ends
    log.jsonl, loss.svg               loss and learning rate per step, and their plot
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from .adapter_model import AdapterModel
from .data import IGNORE_INDEX, Sample, collate
from .features import BLANK, FeatureStore
from .distributed import World
from .plot import loss_svg

logger = logging.getLogger(__name__)

# Reference section 11, per stage: base learning rate (per 256 samples) and weight decay.
STAGE_DEFAULTS = {"stage1": {"base_lr": 1e-4, "weight_decay": 0.05}, "stage2": {"base_lr": 1e-3, "weight_decay": 0.02}}
LATEST = "latest"
FINAL_ADAPTER = "adapter.pth"
LOG_NAME = "log.jsonl"
# Settings that must not change between a run and its resumption (they fix data order and schedule).
RESUME_FIXED = (
    "stage", "batch_size", "grad_accum", "world_size", "epochs", "max_steps", "lr", "min_lr", "weight_decay", "warmup_steps", "seed",
    "num_samples",
)


@dataclass
class TrainConfig:
    stage: str
    batch_size: int = 4  # samples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs
    base_lr: float | None = None  # per 256 samples; default from STAGE_DEFAULTS
    lr: float | None = None  # absolute peak lr; default base_lr * batch / 256
    min_lr: float = 0.0
    weight_decay: float | None = None  # default from STAGE_DEFAULTS
    warmup_steps: int = 0
    seed: int = 0
    save_every: int = 100  # optimizer steps between checkpoints
    keep_checkpoints: int = 1
    precision: str = "auto"  # auto (bf16/fp16 autocast on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    progress: bool = True
    num_samples: int = 0  # filled in by `train`, checked on resume
    world_size: int = 1  # training processes (filled in by `train`); each runs batch_size x grad_accum per step

    def resolved(self, num_samples: int, world_size: int = 1) -> "TrainConfig":
        """Defaults filled in: peak lr, weight decay, sample count, processes."""
        defaults = STAGE_DEFAULTS[self.stage]
        base_lr = self.base_lr if self.base_lr is not None else defaults["base_lr"]
        lr = self.lr if self.lr is not None else base_lr * self.batch_size * self.grad_accum * world_size / 256
        decay = self.weight_decay if self.weight_decay is not None else defaults["weight_decay"]
        return TrainConfig(**{**asdict(self), "base_lr": base_lr, "lr": lr, "weight_decay": decay, "num_samples": num_samples,
                              "world_size": world_size})

    @property
    def samples_per_step(self) -> int:
        """The global batch: samples of one optimizer step over all processes."""
        return self.batch_size * self.grad_accum * self.world_size

    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_samples / self.samples_per_step)

    def total_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else self.epochs * self.steps_per_epoch()


def learning_rate(step: int, config: TrainConfig) -> float:
    """lr of optimizer step `step` (0-based): linear warm-up to the peak, then half a cosine
    down to min_lr at the last step."""
    total, warmup = config.total_steps(), config.warmup_steps
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: AdapterModel, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on 1-d tensors (norms) and biases (reference section 11)."""
    decay, no_decay = [], []
    for key, param in model.trainable():
        (no_decay if param.ndim == 1 or key.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def step_indices(step: int, config: TrainConfig) -> list[int]:
    """Sample indices of optimizer step `step`: epoch e is a permutation seeded by (seed, e)."""
    per_epoch = config.steps_per_epoch()
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(config.num_samples, generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
    return order[position * config.samples_per_step : (position + 1) * config.samples_per_step].tolist()


def _autocast(device: torch.device, precision: str):
    """(context manager, GradScaler or None). fp16 needs loss scaling; bf16 and fp32 do not."""
    if precision == "auto":
        precision = "fp32" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return nullcontext(), None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return torch.autocast(device.type, dtype=dtype), scaler


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def latest_checkpoint(out: Path) -> Path | None:
    pointer = Path(out) / LATEST
    return Path(out) / pointer.read_text().strip() if pointer.exists() else None


def save_checkpoint(out: Path, step: int, model: AdapterModel, optimizer, scaler, config: TrainConfig) -> Path:
    """Write checkpoint-<step>/ completely, then point `latest` at it (atomic rename), then
    delete the oldest ones beyond keep_checkpoints. A crash at any moment leaves a valid latest."""
    out = Path(out)
    folder = out / f"checkpoint-{step:07d}"
    tmp = out / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"model": model.official_state()}, tmp / "adapter.pth")
    state = {"step": step, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None, "config": asdict(config)}
    torch.save(state, tmp / "trainer.pt")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    (out / f"{LATEST}.tmp").write_text(folder.name)
    os.replace(out / f"{LATEST}.tmp", out / LATEST)
    for old in sorted(out.glob("checkpoint-*"))[: -config.keep_checkpoints]:
        shutil.rmtree(old)
    return folder


def _check_resumable(saved: dict, config: TrainConfig, folder: Path) -> None:
    saved = {"world_size": 1, **saved}  # checkpoints from before several processes were supported
    changed = {k: (saved.get(k), getattr(config, k)) for k in RESUME_FIXED if saved.get(k) != getattr(config, k)}
    if changed:
        detail = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())
        raise ValueError(f"cannot resume from {folder}: settings changed ({detail}). Use the same settings or a new --out folder.")


def _read_log(path: Path, upto: int) -> list[dict]:
    """Log entries up to step `upto`: those past the checkpoint are replayed, so they are dropped."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # torn by an interruption
            continue
        if entry["step"] <= upto:
            entries.append(entry)
    return entries


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def train(
    model: AdapterModel,
    samples: list[Sample],
    features: FeatureStore,
    config: TrainConfig,
    out: Path,
    *,
    on_step: Callable[[int, float], None] | None = None,
    world: World | None = None,
) -> Path:
    """Train `config.stage`'s parameters on `samples`; resume from `out` if it has a checkpoint.

    `on_step(step, loss)` runs after each optimizer step (tests use it to interrupt a run).
    `world`: this process among several (torchrun; `demo.train.distributed.init_world`), every
    process calling `train` with the same arguments; None: a single process.
    Returns the final adapter's path. Ctrl-C saves a checkpoint of the last finished step first.
    """
    from tqdm.auto import tqdm

    # 1. Settings, trainable parameters, optimizer
    if not samples:
        raise ValueError("no training samples left (see the bad-data report above)")
    world = world or World()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = config.resolved(len(samples), world.size)
    device = model.prefix_query.device
    model.set_stage(config.stage)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95))
    autocast, scaler = _autocast(device, config.precision)

    # 2. Resume
    start = 0
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None:
        state = torch.load(checkpoint / "trainer.pt", map_location=device, weights_only=True)
        _check_resumable(state["config"], config, checkpoint)
        model.load_official(torch.load(checkpoint / "adapter.pth", map_location="cpu", weights_only=True)["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        start = state["step"]
        logger.info("resuming from %s (step %d)", checkpoint, start)
    log_path = out / LOG_NAME
    log = _read_log(log_path, start)
    if world.is_main:
        log_path.write_text("".join(json.dumps(entry) + "\n" for entry in log))
    total = config.total_steps()
    logger.info("%s: %d samples, %d steps of %d samples, peak lr %.3g", config.stage, len(samples), total, config.samples_per_step, config.lr)
    net = _distributed(model, device) if world.size > 1 else model  # what the micro-batches run through

    # 3. Steps
    model.train()
    done, saved = start, start
    bar = tqdm(total=total, initial=start, desc=config.stage, unit="step", disable=not (config.progress and world.is_main))
    began = time.perf_counter()
    try:
        for step in range(start, total):
            lr = learning_rate(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, tokens = _optimizer_step(net, samples, features, config, step, optimizer, autocast, scaler, device, world)
            done = step + 1
            entry = {"step": done, "epoch": step // config.steps_per_epoch(), "loss": loss, "lr": lr, "tokens": tokens,
                     "seconds": round(time.perf_counter() - began, 3)}
            log.append(entry)
            if world.is_main:
                with log_path.open("a") as handle:
                    handle.write(json.dumps(entry) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if done % config.save_every == 0 and done < total:
                if world.is_main:
                    save_checkpoint(out, done, model, optimizer, scaler, config)
                    _plot(log, out)
                saved = done
            if on_step is not None:
                on_step(done, loss)
    except KeyboardInterrupt:
        # Parameters change only in optimizer.step, so they are exactly those of step `done`.
        if done > saved and world.is_main:
            folder = save_checkpoint(out, done, model, optimizer, scaler, config)
            logger.warning("interrupted: saved %s; run the same command again to resume", folder)
        raise
    finally:
        bar.close()
    final = out / FINAL_ADAPTER
    if world.is_main:
        save_checkpoint(out, total, model, optimizer, scaler, config)
        _plot(log, out)
        torch.save({"model": model.official_state()}, final)
    if world.size > 1:
        torch.distributed.barrier()  # every process returns once the files exist
    return final


def _distributed(model: AdapterModel, device: torch.device):
    """The model wrapped in DistributedDataParallel, which averages the trainable parameters'
    gradients between processes. The frozen base and the buffers are identical in every process
    (loaded from the same files), so DDP neither broadcasts them (gigabytes for LLaMA-7B) nor
    syncs buffers."""
    from torch.nn.parallel import DistributedDataParallel

    frozen = [name for name, param in model.named_parameters() if not param.requires_grad]
    frozen += [name for name, _ in model.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False)


def _optimizer_step(net, samples, features, config, step, optimizer, autocast, scaler, device, world=None) -> tuple[float, int]:
    """One optimizer step over grad_accum micro-batches; returns (mean token loss, tokens).

    Each micro-batch's summed token loss is divided by the tokens of the WHOLE step (over all
    processes), so the accumulated gradient is that of one big batch whatever the split. With
    several processes each takes its share of the step's samples; DDP averages the gradients
    at the last micro-batch's backward (hence the loss x processes, so the average is the sum)."""
    world = world or World()
    chosen = [samples[i] for i in step_indices(step, config)]
    tokens = sum(len(s.ids) - s.prompt_len for s in chosen)  # response tokens + EOS (BOS is always prompt)
    if world.size == 1:
        micro = [chosen[i : i + config.batch_size] for i in range(0, len(chosen), config.batch_size)]
    else:
        share = config.batch_size * config.grad_accum
        mine = chosen[world.rank * share : (world.rank + 1) * share]
        # Every process runs grad_accum backward passes (DDP syncs at the same one everywhere);
        # the short last step of an epoch may leave a process micro-batches with no sample.
        micro = [mine[i * config.batch_size : (i + 1) * config.batch_size] for i in range(config.grad_accum)]
    optimizer.zero_grad(set_to_none=True)
    total_loss = 0.0
    for k, batch in enumerate(micro):
        # DDP averages over processes: x world.size makes it the sum. An empty share runs one
        # sample with weight 0, so that its backward still joins the all-reduce.
        weight = 1.0 if world.size == 1 else float(world.size) if batch else 0.0
        batch = batch or chosen[:1]
        ids, labels, mask = (t.to(device) for t in collate(batch))  # (B, T) each
        embeddings = features.get([s.image or BLANK for s in batch]).to(device)  # (B, E)
        # Gradients are all-reduced at the last micro-batch's backward only.
        with net.no_sync() if world.size > 1 and k < len(micro) - 1 else nullcontext():
            with autocast:
                logits = net(ids, mask, embeddings).logits  # (B, T, V)
            loss = F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            ) / tokens  # next-token loss on response tokens only
            scaled = loss if weight == 1.0 else loss * weight
            (scaler.scale(scaled) if scaler else scaled).backward()
        if weight:
            total_loss += loss.item()
    if world.size > 1:  # the logged loss: every process's share (a metric; the gradients went through DDP)
        summed = torch.tensor([total_loss], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(summed)
        total_loss = float(summed)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total_loss, tokens


def _plot(log: list[dict], out: Path) -> None:
    loss_svg([e["step"] for e in log], [e["loss"] for e in log], out / "loss.svg")
