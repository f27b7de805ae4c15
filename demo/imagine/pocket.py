"""The pocket world's image decoder: an ImageBind-space vector -> a small picture of the object.

Why not a tiny unCLIP: a diffusion model learns a distribution of images and needs many
thousands of denoising updates before its samples show an object; the pocket world is built on
2 CPU cores within minutes, and its images differ only in shape, colour, size and pose. A
small convolutional decoder trained by regression (mean squared error to the world's own
images, from their micro-ImageBind embeddings) learns the part of the picture the embedding
determines (the object's colour, outline and size on a typical backdrop) in a few hundred steps;
what the embedding leaves open (pose, backdrop) it draws as an average, so pictures are soft.

Inputs: any vector of the ImageBind space (an image's, a sound's, a point cloud's, a weighted
mix, with or without the visual cache: `ImageBindLLMPipeline.image_embedding`). Those vectors'
norms differ by modality (reference section 13 keeps them for unCLIP), so the decoder uses the
DIRECTION only. Of `ImageSettings`: `seed` and `noise_level` perturb that direction (noise_level
0: the same picture whatever the seed; up to 999: as much noise as signal), `size` resizes the
picture, `steps`/`guidance`/`prompt` do not apply (one pass, no text): `progress(k, n)` reports
the decoder's n upsampling stages, and `cancel` is checked between them.

    python -m demo.world build   trains it (`train_decoder`) into weights/pocket/image_decoder/
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..cancel import CancelToken, check
from ..errors import InputError, WeightsError
from .generator import ImageGenerator, ImageSettings, Progress

logger = logging.getLogger(__name__)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class DecoderConfig:
    embed_dim: int = 1024  # the encoder's out_dim
    hidden: int = 256  # the MLP between the direction and the first feature map
    base: int = 4  # side of the first feature map
    channels: tuple[int, ...] = (64, 32, 16)  # one upsampling stage (x2) each: 4 -> 32 px
    noise_dim: float = 1.0  # noise_level 999 adds a random direction this long to the unit input

    @property
    def side(self) -> int:
        return self.base * 2 ** len(self.channels)


class DecoderNet(nn.Module):
    """(B, E) vectors -> (B, 3, side, side) RGB in [0, 1]."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        first = config.channels[0]
        self.stem = nn.Sequential(
            nn.Linear(config.embed_dim, config.hidden), nn.SiLU(), nn.Linear(config.hidden, first * config.base**2), nn.SiLU()
        )
        ins = (first, *config.channels[:-1])
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU())
            for i, o in zip(ins, config.channels)
        )
        self.to_rgb = nn.Conv2d(config.channels[-1], 3, 3, padding=1)

    def begin(self, vectors: Tensor) -> Tensor:
        """(B, E) -> (B, C0, base, base): the first feature map, from the unit direction."""
        c = self.config
        return self.stem(F.normalize(vectors.float(), dim=-1)).reshape(len(vectors), c.channels[0], c.base, c.base)

    def finish(self, features: Tensor) -> Tensor:
        return torch.sigmoid(self.to_rgb(features))  # (B, 3, side, side)

    def forward(self, vectors: Tensor) -> Tensor:
        x = self.begin(vectors)
        for stage in self.stages:
            x = stage(x)  # (B, C_k, side_k, side_k), side doubling
        return self.finish(x)


class PocketDecoder(ImageGenerator):
    """`ImageGenerator` over a `DecoderNet` (see the module docstring); CPU, float32."""

    max_noise_level = 999
    settings_used = ("noise_level", "seed", "size")  # no text encoder, no denoising steps

    def __init__(self, net: DecoderNet):
        self.net = net.eval().requires_grad_(False)
        self.embed_dim = net.config.embed_dim

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "PocketDecoder":
        """Load `folder`/config.json + model.safetensors (what `save_pretrained` writes)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise WeightsError(
                f"no pocket image decoder at {folder} ({CONFIG_NAME} + {WEIGHTS_NAME} expected): rebuild the pocket model "
                "with `python -m demo.world build --ship`"
            )
        raw = json.loads((folder / CONFIG_NAME).read_text())
        config = DecoderConfig(**{**raw, "channels": tuple(raw["channels"])})
        net = DecoderNet(config)
        net.load_state_dict({k: v.float() for k, v in load_file(folder / WEIGHTS_NAME).items()})
        return cls(net)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """float16 weights (half the bytes; loading upcasts) and the config."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self.net.config), indent=2) + "\n")
        save_file({k: v.half().contiguous() for k, v in self.net.state_dict().items()}, str(folder / WEIGHTS_NAME))
        return folder

    def generate(self, embedding: Tensor, settings: ImageSettings, *, progress: Progress | None = None,
                 cancel: CancelToken | None = None):
        from PIL import Image

        settings = settings.check(self.max_noise_level)
        if settings.seed is None:
            raise InputError("generate needs a concrete seed: pass settings.with_seed()")
        if tuple(embedding.shape) != (self.embed_dim,):
            raise InputError(f"image embedding has shape {list(embedding.shape)}; this model takes [{self.embed_dim}]")
        vector = F.normalize(embedding.detach().float().cpu().reshape(1, -1), dim=-1)  # (1, E)
        if settings.noise_level:
            generator = torch.Generator("cpu").manual_seed(settings.seed)
            noise = F.normalize(torch.randn(vector.shape, generator=generator), dim=-1)  # (1, E) random direction
            vector = vector + noise * self.net.config.noise_dim * settings.noise_level / self.max_noise_level
        check(cancel)
        stages = len(self.net.stages)
        with torch.inference_mode():
            x = self.net.begin(vector)
            for k, stage in enumerate(self.net.stages, 1):
                x = stage(x)
                if progress is not None:
                    progress(k, stages)
                check(cancel)
            rgb = self.net.finish(x)[0]  # (3, side, side)
        image = Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        sides = settings.sides()
        return image.resize(sides, Image.BICUBIC) if sides and sides != image.size else image


# ---------------------------------------------------------------------------------------------
# Training (called by demo.world.build)
# ---------------------------------------------------------------------------------------------


@dataclass
class DecoderTraining:
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    input_noise: float = 0.3  # random direction added to the unit inputs (norm): smoother, robust to mixes
    seed: int = 0


def train_decoder(vectors: Tensor, images: Tensor, config: DecoderTraining = DecoderTraining(),
                  decoder: DecoderConfig | None = None) -> PocketDecoder:
    """Regression from (N, E) vectors to (N, 3, side, side) target images in [0, 1] (several
    vectors may share an image: an object's image, sound, depth map and point cloud)."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    decoder = decoder or DecoderConfig(embed_dim=vectors.shape[1], base=images.shape[-1] // 2 ** len(DecoderConfig.channels))
    if decoder.side != images.shape[-1]:
        raise ValueError(f"the decoder draws {decoder.side} px; the targets are {images.shape[-1]} px")
    net = DecoderNet(decoder).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps, pct_start=0.1)
    units = F.normalize(vectors.float(), dim=-1)  # (N, E)
    began = time.perf_counter()
    for step in range(config.steps):
        index = torch.randint(len(units), (config.batch_size,), generator=generator)  # (B,)
        noise = F.normalize(torch.randn(len(index), units.shape[1], generator=generator), dim=-1)  # (B, E)
        loss = F.mse_loss(net(units[index] + config.input_noise * noise), images[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == config.steps - 1:
            logger.info("image decoder step %d/%d loss %.4f (%.0f s)", step + 1, config.steps, loss.item(), time.perf_counter() - began)
    return PocketDecoder(net)
