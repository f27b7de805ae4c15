"""Image generators: an ImageBind-space vector (+ a prompt) -> a picture.

`ImageGenerator` is the interface the pipeline calls (`ImageBindLLMPipeline.imagine`); any model
that turns a [D] embedding into an image can implement it (Stable unCLIP here; a small decoder
trained on the pocket world's images could too). `UnCLIPGenerator` wraps diffusers'
`StableUnCLIPImg2ImgPipeline` (stabilityai/stable-diffusion-2-1-unclip, conditioned on OpenCLIP
ViT-H's 1024-d image embedding, which is ImageBind's vision space), called with `image_embeds`
as the released demo does (reference section 13).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cancel import CancelToken, check
from ..errors import InputError, WeightsError

Progress = Callable[[int, int], None]  # progress(k, n): denoising step k of n finished

MAX_SEED = 2**63 - 1
MAX_PROMPT_CHARS = 2000  # CLIP reads 77 tokens anyway; this only bounds the work of tokenising


@dataclass(frozen=True)
class ImageSettings:
    """The controls of one image. Defaults are the released demo's (diffusers' own defaults)."""

    prompt: str = ""
    negative_prompt: str | None = None
    steps: int = 20
    guidance: float = 10.0  # classifier-free guidance; <= 1 turns it off (one UNet pass per step)
    noise_level: int = 0  # noise added to the image embedding: higher, more varied pictures
    seed: int | None = None  # None: a fresh random seed, reported in the output so it can be replayed
    size: int | tuple[int, int] | None = None  # side or (width, height); None: the model's native size

    def check(self, max_noise_level: int = 999) -> "ImageSettings":
        def whole(name, value, low, high):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InputError(f"image setting {name}={value!r} must be a whole number in [{low}, {high}]")

        for name, text in (("prompt", self.prompt), ("negative_prompt", self.negative_prompt or "")):
            if not isinstance(text, str):
                raise InputError(f"image setting {name} must be text, got {type(text).__name__}")
            if len(text) > MAX_PROMPT_CHARS:
                raise InputError(f"the image {name.replace('_', ' ')} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}")
        whole("steps", self.steps, 1, 200)
        whole("noise_level", self.noise_level, 0, max_noise_level)
        if self.seed is not None:
            whole("seed", self.seed, 0, MAX_SEED)
        if not isinstance(self.guidance, (int, float)) or isinstance(self.guidance, bool) or not 0 <= self.guidance <= 50:
            raise InputError(f"image setting guidance={self.guidance!r} must be a number in [0, 50]")
        for side in self.sides() or ():
            # The VAE and UNet halve the picture several times: sides must divide evenly.
            whole("size", side, 8, 2048)
            if side % 8:
                raise InputError(f"image size {side} is not a multiple of 8")
        return self

    def sides(self) -> tuple[int, int] | None:
        """(width, height) or None."""
        if self.size is None:
            return None
        if isinstance(self.size, (tuple, list)):
            if len(self.size) != 2:
                raise InputError(f"image size must be one side or (width, height), got {self.size!r}")
            return tuple(self.size)
        return (self.size, self.size)

    def with_seed(self) -> "ImageSettings":
        """These settings with a concrete seed (a fresh random one when none was given)."""
        if self.seed is not None:
            return self
        return ImageSettings(**{**self.__dict__, "seed": int.from_bytes(os.urandom(8), "little") & MAX_SEED})


class ImageGenerator(ABC):
    """A [embed_dim] ImageBind-space vector + settings -> one PIL image."""

    embed_dim: int  # the width of the vectors it accepts (ImageBind's out_dim: 1024 for the release)
    max_noise_level: int = 999
    # The ImageSettings fields this model reads; records and notes name only these (the pocket
    # decoder, for one, has no prompt, steps or guidance).
    settings_used: tuple[str, ...] = ("prompt", "negative_prompt", "steps", "guidance", "noise_level", "seed", "size")

    @abstractmethod
    def generate(
        self, embedding: torch.Tensor, settings: ImageSettings, *, progress: Progress | None = None, cancel: CancelToken | None = None
    ):
        """`settings` carries a concrete seed (see ImageSettings.with_seed): same seed, same image.
        `progress(k, n)` after each of the n steps; raises `Cancelled` at the next step once
        `cancel` is cancelled."""


class UnCLIPGenerator(ImageGenerator):
    """diffusers' StableUnCLIPImg2ImgPipeline fed with `image_embeds` (no image is encoded).

    One image at a time: a diffusers pipeline keeps per-call state in its scheduler, so calls
    from several threads are serialised by a lock."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline  # diffusers.StableUnCLIPImg2ImgPipeline, on its device
        self.pipeline.set_progress_bar_config(disable=True)
        self.embed_dim = int(pipeline.image_normalizer.mean.shape[-1])
        self.max_noise_level = int(pipeline.image_noising_scheduler.config.num_train_timesteps) - 1
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> "UnCLIPGenerator":
        """Load a LOCAL diffusers folder (`ibllm download unclip`): float16 on a GPU,
        float32 on the CPU (whose fp16 kernels are slow or missing). Never touches the network."""
        from diffusers import StableUnCLIPImg2ImgPipeline

        folder = Path(folder)
        if not (folder / "model_index.json").is_file():
            raise WeightsError(
                f"no Stable unCLIP model at {folder} (model_index.json missing): download it with "
                "`ibllm download unclip` and pass its folder (weights/downloads/stable-diffusion-2-1-unclip)"
            )
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        # `ibllm download unclip` keeps only the fp16 files where a component has them (half the
        # bytes): read those (diffusers takes the variant per component), upcast on the CPU. A full
        # copy of the repository is read in full precision for a float32 model.
        has_fp16 = any(folder.glob("*/*.fp16.*"))
        has_full = any((folder / "unet" / f"diffusion_pytorch_model.{ext}").is_file() for ext in ("safetensors", "bin"))
        variant = "fp16" if has_fp16 and (dtype == torch.float16 or not has_full) else None
        try:
            pipeline = StableUnCLIPImg2ImgPipeline.from_pretrained(folder, dtype=dtype, variant=variant, local_files_only=True)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise WeightsError(
                f"cannot load the Stable unCLIP model from {folder}: {exc}. The folder is incomplete "
                "(an interrupted download?): run `ibllm download unclip` again, it resumes."
            ) from exc
        return cls(pipeline.to(device))

    @property
    def device(self) -> torch.device:
        return self.pipeline.unet.device

    def generate(self, embedding, settings, *, progress=None, cancel=None):
        settings = settings.check(self.max_noise_level)
        if settings.seed is None:
            raise InputError("generate needs a concrete seed: pass settings.with_seed()")
        if embedding.shape != (self.embed_dim,):
            raise InputError(f"image embedding has shape {list(embedding.shape)}; this model takes [{self.embed_dim}]")
        steps = settings.steps
        done = 0

        def on_step(step: int, timestep, latents) -> None:
            # diffusers 0.42's StableUnCLIPImg2ImgPipeline has only the older `callback` hook (no
            # `callback_on_step_end`); raising here is how a request stops between two steps.
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, steps)
            check(cancel)

        check(cancel)
        width, height = settings.sides() or (None, None)
        unet = self.pipeline.unet
        # A CPU generator: the same seed gives the same noise on every device.
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        # Wait for the pipeline, still cancellable while another image is being made.
        while not self._lock.acquire(timeout=0.05):
            check(cancel)
        try:
            with torch.inference_mode():
                out = self.pipeline(
                    prompt=settings.prompt,
                    negative_prompt=settings.negative_prompt or None,
                    image_embeds=embedding[None].to(unet.device, unet.dtype),  # (1, D)
                    num_inference_steps=steps,
                    guidance_scale=float(settings.guidance),
                    noise_level=settings.noise_level,
                    generator=generator,
                    width=width,
                    height=height,
                    callback=on_step,
                    callback_steps=1,
                )
        finally:
            self._lock.release()
        return out.images[0]
