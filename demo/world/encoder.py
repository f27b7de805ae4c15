"""A micro ImageBind, trained the way ImageBind was, on the pocket world.

Meta's `ImageBindModel` with the project's "tiny" sizes (64-wide towers of 2 blocks, the released
1024-d output) and the project's Point-Bind encoder for points (`POCKET_ENCODER`). Two phases, as in the paper:

  1. image <-> text: the vision and text towers learn together with a symmetric InfoNCE loss on
     image-caption pairs (ImageBind starts from CLIP, which was trained this way);
  2. everything else -> image: the vision tower is frozen; audio, depth and point towers learn
     with InfoNCE against the image embedding of the SAME object. They never see text.

Samples go through the project's own loaders (`demo.inputs.registry.load_input`), so training
sees exactly what inference will. The result is written in the released `imagebind_w3D.pth`
layout (fp16) with `encoder_config.json` beside it, and loads with `MultimodalEncoder`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..encoders.encoder import CONFIG_FILENAME, IMAGEBIND_PRESETS, WEIGHTS_NAME, EncoderConfig
from ..encoders.point_bind import PointBindConfig, PointBindEncoder
from ..inputs.registry import load_input
from ..inputs.text import tokenize_text

logger = logging.getLogger(__name__)
BOUND_MODALITIES = ("audio", "depth", "point")  # aligned to images only, never to text
# The project's "tiny" sizes (1024-d output, as everything downstream expects), except that
# Point-BERT groups 32 patches of 32 points: "tiny"'s 16 x 8 points see too little of a surface.
POCKET_ENCODER = EncoderConfig(
    dict(IMAGEBIND_PRESETS["tiny"]), PointBindConfig(**{**PointBindConfig.preset("tiny").to_dict(), "num_group": 32, "group_size": 32})
)
CAPTION_TEMPLATES = ("{caption}", "a photo of {caption}", "there is {caption}", "{caption}, seen from the side")


@dataclass
class EncoderTraining:
    text_steps: int = 500  # phase 1 optimizer steps
    bind_steps: int = 450  # phase 2 optimizer steps
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    temperature: float = 0.07  # InfoNCE: logits = cosine / temperature
    seed: int = 0


def load_all(entries: list[dict], modality: str) -> Tensor:
    """Each entry's file of `modality` through the project's loader -> (N, *sample_shape)."""
    samples = [load_input(modality, entry["files"][modality]) for entry in entries]
    if modality == "audio":  # a 2 s sound gives 3 identical clips; training uses one
        samples = [s[:1] for s in samples]  # (1, 1, 128, 204)
    return torch.stack(samples)


def info_nce(a: Tensor, b: Tensor, temperature: float, same: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between unit rows a (B, E) and b (B, E); pair i is (a_i, b_i).

    `same` (B, B) bool marks further positives (two images with the same caption): the target is
    then spread evenly over them, so identical captions are not pushed apart."""
    logits = a @ b.T / temperature  # (B, B)
    target = torch.eye(len(a), device=a.device) if same is None else same.float()
    target = target / target.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean() + torch.sum(-target.T * logits.log_softmax(0), 0).mean())


class MicroImageBind(nn.Module):
    """ImageBindModel + PointBindEncoder, with one unit-norm `embed(modality, batch)`."""

    def __init__(self, config: EncoderConfig):
        from ..encoders.imagebind_import import import_imagebind_model

        super().__init__()
        self.config = config
        self.imagebind = import_imagebind_model().ImageBindModel(**config.imagebind)
        self.point = PointBindEncoder(config.point)

    def embed(self, modality: str, batch: Tensor) -> Tensor:
        """(B, *sample_shape) -> (B, E) unit rows (the per-modality logit scales are undone)."""
        if modality == "point":
            out = self.point(batch)
        else:
            key = {"image": "vision", "video": "vision"}.get(modality, modality)
            out = self.imagebind({key: batch})[key]
        return F.normalize(out.float(), dim=-1)

    def released_state_dict(self) -> dict[str, Tensor]:
        return {**self.imagebind.state_dict(), **self.point.released_state_dict()}


def _tower(model: MicroImageBind, modality: str) -> list[nn.Module]:
    if modality == "point":
        return [model.point]
    key = {"image": "vision"}.get(modality, modality)
    ib = model.imagebind
    return [ib.modality_preprocessors[key], ib.modality_trunks[key], ib.modality_heads[key], ib.modality_postprocessors[key]]


def _parameters(model: MicroImageBind, modalities: tuple[str, ...]) -> list[nn.Parameter]:
    params = [p for m in modalities for module in _tower(model, m) for p in module.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def _optimizer(params: list[nn.Parameter], config: EncoderTraining, steps: int):
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    warmup = max(1, steps // 10)  # linear warm-up, then a cosine to zero
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item())
    )
    return optimizer, schedule


def train_encoder(entries: list[dict], out_dir: Path, config: EncoderTraining = EncoderTraining()) -> Path:
    """Train on `entries` (world manifest, train split); write the weights into `out_dir`."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = MicroImageBind(POCKET_ENCODER).requires_grad_(False)
    began = time.perf_counter()
    images = load_all(entries, "image")  # (N, 3, 224, 224)
    captions = [e["caption"] for e in entries]
    caption_ids = torch.tensor([sorted(set(captions)).index(c) for c in captions])  # (N,) which caption
    tokens = {t: torch.stack([tokenize_text(t.format(caption=c)) for c in captions]) for t in CAPTION_TEMPLATES}  # (N, 77) each
    logger.info("encoder: %d objects loaded in %.0f s", len(entries), time.perf_counter() - began)

    # Phase 1: image <-> text.
    model.train()
    optimizer, schedule = _optimizer(_parameters(model, ("image", "text")), config, config.text_steps)
    for step in range(config.text_steps):
        index = torch.randperm(len(entries), generator=generator)[: config.batch_size]  # (B,)
        template = CAPTION_TEMPLATES[step % len(CAPTION_TEMPLATES)]
        same = caption_ids[index, None] == caption_ids[None, index]  # (B, B)
        loss = info_nce(model.embed("image", images[index]), model.embed("text", tokens[template][index]), config.temperature, same)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == config.text_steps - 1:
            logger.info("encoder image-text step %d/%d loss %.3f", step + 1, config.text_steps, loss.item())
    model.requires_grad_(False).eval()

    # Phase 2: audio, depth and points -> the frozen image embeddings of the same objects.
    with torch.no_grad():
        targets = torch.cat([model.embed("image", chunk) for chunk in images.split(128)])  # (N, E)
    del images
    inputs = {m: load_all(entries, m) for m in BOUND_MODALITIES}
    for m in BOUND_MODALITIES:
        for module in _tower(model, m):
            module.train()
    model.point.head[1].p = 0.1  # Point-Bind's head dropout (0.5) is too strong for a 32-wide trunk
    optimizer, schedule = _optimizer(_parameters(model, BOUND_MODALITIES), config, config.bind_steps)
    for step in range(config.bind_steps):
        index = torch.randperm(len(entries), generator=generator)[: config.batch_size]
        losses = {m: info_nce(model.embed(m, inputs[m][index]), targets[index], config.temperature) for m in BOUND_MODALITIES}
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == config.bind_steps - 1:
            logger.info("encoder ->image step %d/%d %s", step + 1, config.bind_steps,
                        " ".join(f"{m} {v.item():.3f}" for m, v in losses.items()))
    model.point.head[1].p = 0.5
    logger.info("encoder trained in %.0f s", time.perf_counter() - began)
    return save_encoder(model, out_dir)


def save_encoder(model: MicroImageBind, out_dir: Path) -> Path:
    """Released layout, floating tensors in fp16 (half the size; inference upcasts on the CPU)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.released_state_dict().items()}
    path = out_dir / WEIGHTS_NAME
    torch.save(state, path)
    (out_dir / CONFIG_FILENAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    return path


def retrieval_accuracy(encoder, entries: list[dict], gallery: list[dict]) -> dict[str, dict[str, float]]:
    """For each query modality, the share of held-out queries whose nearest gallery IMAGE has the
    same value of each attribute the modality carries ({modality: {attribute: accuracy}}).
    Text queries are captions; image queries search the other images (never themselves)."""
    from .scene import OBSERVABLE

    def embed(modality: str, items: list[dict]) -> Tensor:
        if modality == "text":
            samples = torch.stack([tokenize_text(e["caption"]) for e in items])
        else:
            samples = torch.stack([load_input(modality, e["files"][modality]) for e in items])
        return F.normalize(encoder.encode_batch(modality, samples, batch_size=32), dim=-1)  # (N, E)

    images = embed("image", gallery)
    report = {}
    for modality in ("image", "text", *BOUND_MODALITIES):
        nearest = (embed(modality, entries) @ images.T).argmax(1)  # (Q,) gallery index
        attributes = OBSERVABLE.get(modality, ("shape", "colour", "size"))
        report[modality] = {a: sum(e[a] == gallery[int(j)][a] for e, j in zip(entries, nearest)) / len(entries) for a in attributes}
    return report
