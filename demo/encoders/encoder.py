"""One object that turns preprocessed tensors into ImageBind embeddings, for every modality.

`MultimodalEncoder` wires Meta's `ImageBindModel` (vision, text, audio, depth, thermal, IMU) and
the optional Point-Bind point encoder. Each embedding is exactly what ImageBind's forward returns
for that sample with batch 1: L2-normalised, then multiplied by the modality's fixed logit scale
(1 for vision and point, 20 for audio, ...), averaged over clips/views for video and audio.

Device policy: towers stay on the CPU (memory-mapped from the weights file after
`from_pretrained`) until their modality is first encoded; then that tower alone (preprocessor,
trunk, head, postprocessor) moves to `device` in `dtype` and stays there. An image-only session
thus puts 0.63 B of ImageBind-Huge's 1.2 B parameters on the GPU. Defaults: CUDA in float16 when
available, else CPU in float32.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from demo.cancel import CancelToken, check
from demo.encoders.point_bind import PointBindConfig, PointBindEncoder, is_point_key, load_point_bind, load_strictly
from demo.preprocess import PreprocessConfig
from demo.errors import InputError, WeightsError
from demo.modalities import MODALITIES, get_modality

CONFIG_FILENAME = "encoder_config.json"  # written next to the weights file
WEIGHTS_NAME = "imagebind_w3D.pth"  # the released ImageBind-Huge + Point-Bind file

# ImageBindModel keyword arguments. "huge" is Meta's `imagebind_huge()`; "tiny" (about 4 M
# parameters, most in the 49408-token text embedding) runs every modality on CPU in milliseconds.
_SMALL_TOWER = dict(embed_dim=64, num_blocks=2, num_heads=4)
IMAGEBIND_PRESETS: dict[str, dict[str, Any]] = {
    "huge": dict(
        vision_embed_dim=1280, vision_num_blocks=32, vision_num_heads=16,
        text_embed_dim=1024, text_num_blocks=24, text_num_heads=16,
        out_embed_dim=1024, audio_drop_path=0.1, imu_drop_path=0.7,
    ),
    "tiny": dict(
        out_embed_dim=1024,  # the released width, so embeddings, caches and files are interchangeable
        **{f"{tower}_{arg}": value
           for tower in ("vision", "text", "audio", "depth", "thermal", "imu")
           for arg, value in _SMALL_TOWER.items()},
    ),
}


# Preprocessing settings that an ImageBindModel argument fixes too: setting -> (argument,
# ImageBindModel's default). The image size (224) is fixed inside ImageBindModel.
_MODEL_FIXES = {"video_frames": ("video_frames", 2), "audio_num_mel_bins": ("audio_num_mel_bins", 128),
                "audio_target_len": ("audio_target_len", 204), "image_size": (None, 224), "text_context": (None, 77),
                "imu_steps": (None, 2000), "imu_channels": (None, 6)}


@dataclass
class EncoderConfig:
    """The encoder's whole description, saved as `encoder_config.json` beside its weights.

    imagebind: ImageBindModel keyword arguments. point: the point encoder's sizes (None: no point
    encoder). preprocess: how inputs are prepared for these towers (`demo.preprocess`;
    a file written before this field existed holds the release's)."""

    imagebind: dict[str, Any]
    point: PointBindConfig | None = field(default_factory=PointBindConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if self.point is not None and self.point.out_dim != self.out_dim:
            raise ValueError(f"point out_dim {self.point.out_dim} differs from ImageBind's out_embed_dim {self.out_dim}")
        for setting, (argument, default) in _MODEL_FIXES.items():
            model_value = self.imagebind.get(argument, default) if argument else default
            if getattr(self.preprocess, setting) != model_value:
                raise ValueError(
                    f"preprocess.{setting}={getattr(self.preprocess, setting)} does not fit the ImageBind towers, "
                    f"which take {model_value}" + (f" (imagebind argument {argument})" if argument else "")
                )

    @property
    def out_dim(self) -> int:
        return self.imagebind.get("out_embed_dim", 768)  # ImageBindModel's default

    @classmethod
    def preset(cls, name: str) -> EncoderConfig:
        if name not in IMAGEBIND_PRESETS:
            raise KeyError(f"unknown encoder preset {name!r}; known: {', '.join(IMAGEBIND_PRESETS)}")
        return cls(dict(IMAGEBIND_PRESETS[name]), PointBindConfig.preset(name))

    def to_dict(self) -> dict[str, Any]:
        return {"imagebind": dict(self.imagebind), "point": None if self.point is None else self.point.to_dict(),
                "preprocess": self.preprocess.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderConfig:
        # JSON turns tuples (e.g. kernel_size) into lists; ImageBind compares some of them to tuples.
        imagebind = {k: tuple(v) if isinstance(v, list) else v for k, v in data["imagebind"].items()}
        point = data.get("point")
        return cls(imagebind, None if point is None else PointBindConfig.from_dict(point),
                   PreprocessConfig.from_dict(data.get("preprocess")))


class Tower:
    """One encoder tower as the encoder drives it: the modules it moves to the device, and its
    forward pass with and without the final normalise-and-scale. Subclasses add their checks."""

    modules: list[nn.Module]
    float32_input = False  # takes float32 whatever the model dtype

    def forward(self, batch: Tensor) -> Tensor:  # (B, *sample) -> (B, out_dim), normalised and scaled
        raise NotImplementedError

    def forward_unnormalised(self, batch: Tensor) -> Tensor:  # (B, *sample) -> (B, out_dim), the head's output
        raise NotImplementedError

    def check_samples(self, modality: str, samples: Tensor) -> None:
        """Raise InputError for samples this tower cannot take (shape and values already checked)."""


class ImageBindTower(Tower):
    """One modality of Meta's ImageBindModel (preprocessor, trunk, head, postprocessor)."""

    def __init__(self, model: nn.Module, key: str):
        self.model, self.key = model, key
        self.modules = [getattr(model, part)[key] for part in
                        ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors")]

    def forward(self, batch: Tensor) -> Tensor:
        return self.model({self.key: batch})[self.key]  # ImageBind averages clips/views of 5-D+ inputs

    def forward_unnormalised(self, batch: Tensor) -> Tensor:
        model, key = self.model, self.key
        clips = batch.ndim >= 5  # audio and video: [B, S, ...], S clips or views per sample
        if clips:
            b, s = batch.shape[:2]
            batch = batch.reshape(b * s, *batch.shape[2:])
        value = model.modality_preprocessors[key](**{key: batch})
        value = model.modality_heads[key](model.modality_trunks[key](**value["trunk"]), **value["head"])  # (B[*S], out_dim)
        return value.reshape(b, s, -1).mean(dim=1) if clips else value  # ImageBind's clip average, before normalising


class PointBindTower(Tower):
    """Point-Bind's point encoder; grouping runs in float32 whatever the model dtype
    (see point_bind.group_points)."""

    float32_input = True

    def __init__(self, encoder: PointBindEncoder):
        self.encoder = encoder
        self.modules = [encoder]

    def forward(self, batch: Tensor) -> Tensor:
        return self.encoder(batch)

    def forward_unnormalised(self, batch: Tensor) -> Tensor:
        return self.encoder.head(self.encoder.point_trunk(batch))

    def check_samples(self, modality: str, samples: Tensor) -> None:
        config = self.encoder.config
        if samples.shape[1] < (needed := max(config.num_group, config.group_size)):
            raise InputError(f"point cloud has {samples.shape[1]} points; the encoder needs at least {needed}")


# What to do when a modality's tower is missing from the loaded weights (default: a generic fix).
MISSING_TOWER_FIX = {
    "point": "point clouds need the Point-Bind encoder, which the loaded weights lack (no point_trunk.* keys): "
             "load imagebind_w3D.pth instead of imagebind_huge.pth",
}


class MultimodalEncoder:
    """Preprocessed sample of any modality -> its ImageBind embedding (float32, on the CPU).

    Each modality's row (`demo.modalities`) names its tower and its sample layout; `towers` maps
    tower keys to the loaded towers, so no modality is special-cased here."""

    def __init__(
        self,
        config: EncoderConfig,
        imagebind: nn.Module,
        point: PointBindEncoder | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.config = config
        self.imagebind = imagebind.eval().requires_grad_(False)
        self.point = None if point is None else point.eval().requires_grad_(False)
        self.towers: dict[str, Tower] = {key: ImageBindTower(self.imagebind, key) for key in self.imagebind.modality_trunks}
        if self.point is not None:
            self.towers["point"] = PointBindTower(self.point)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Half precision where it is fast (GPU); CPU kernels for fp16 are slow or missing.
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self._placed: set[str] = set()  # towers already on (device, dtype)
        self._place_lock = threading.Lock()  # the app may encode from several threads

    @classmethod
    def from_config(
        cls, config: EncoderConfig | str, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> MultimodalEncoder:
        """Randomly initialised encoder (tests, benchmarks, writing tiny weights)."""
        from demo.encoders.imagebind_import import import_imagebind_model

        config = EncoderConfig.preset(config) if isinstance(config, str) else config
        imagebind = import_imagebind_model().ImageBindModel(**config.imagebind)
        point = None if config.point is None else PointBindEncoder(config.point)
        return cls(config, imagebind, point, device, dtype)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        config: EncoderConfig | str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MultimodalEncoder:
        """Load `imagebind_huge.pth` (Meta) or `imagebind_w3D.pth` (with Point-Bind) format weights.

        `config`: an EncoderConfig, a preset name, or None for the `encoder_config.json` saved next
        to the weights ("huge" when there is none). Every key of the file must be used: ImageBind
        keys load strictly into ImageBind, point keys into the point encoder. A file without point
        keys disables the point modality.
        """
        from accelerate import init_empty_weights

        from demo.encoders.imagebind_import import import_imagebind_model

        # 1. Resolve the config
        path = Path(path)
        config = _resolve_config(path, config)

        # 2. Read the state dict (memory-mapped: towers never used are never read from disk)
        state_dict = _read_state_dict(path)

        # 3. Split it between the two models and load each strictly
        point_keys = {k: v for k, v in state_dict.items() if is_point_key(k)}
        imagebind_keys = {k: v for k, v in state_dict.items() if not is_point_key(k)}
        with init_empty_weights():  # parameters on the meta device: no 4.8 GB random init
            imagebind = import_imagebind_model().ImageBindModel(**config.imagebind)
        load_strictly(imagebind, imagebind_keys, f"ImageBind ({path.name})", assign=True)
        point = None
        if point_keys:
            if config.point is None:
                raise WeightsError(f"{path} has point encoder keys but the config has no point encoder (point=None)")
            point = load_point_bind(point_keys, config.point, assign=True)
        return cls(config, imagebind, point, device, dtype)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names this encoder can encode (point only with Point-Bind weights)."""
        return tuple(name for name, row in MODALITIES.items() if row.tower and row.tower in self.towers)

    def encode(self, modality: str, sample: Tensor, *, cancel: CancelToken | None = None) -> Tensor:
        """One preprocessed sample (layout: `demo.modalities`) -> embedding [out_dim], float32, CPU."""
        return self.encode_batch(modality, sample[None], batch_size=1, cancel=cancel)[0]

    def encode_unnormalised(self, modality: str, sample: Tensor, *, cancel: CancelToken | None = None) -> Tensor:
        """One sample -> its PRE-normalisation embedding [out_dim], float32, CPU: the modality
        head's output, before ImageBind's normalise-and-scale postprocessor (image output,
        reference section 13, feeds these to unCLIP). Clips/views are averaged as `encode` does,
        here before normalisation since there is none."""
        return self.encode_batch(modality, sample[None], batch_size=1, cancel=cancel, normalised=False)[0]

    def encode_batch(
        self, modality: str, samples: Tensor, batch_size: int = 32, *, cancel: CancelToken | None = None,
        normalised: bool = True,
    ) -> Tensor:
        """Samples [N, *sample_shape] -> embeddings [N, out_dim], float32, CPU, in batches.

        `cancel` is checked before the tower is placed and before each batch's forward pass (one
        sample's clips or views go through the tower together, as in ImageBind, so that the
        embedding stays ImageBind's); a cancelled request raises `Cancelled` there.
        `normalised=False` stops after the modality head (see `encode_unnormalised`)."""
        tower = self._check_samples(modality, samples)
        key = get_modality(modality).tower
        check(cancel)
        self._place(key)  # outside inference mode, so the moved weights stay ordinary tensors
        outputs = []
        with torch.inference_mode():
            for chunk in samples.split(batch_size):
                check(cancel)
                # Token ids stay integers; everything else takes the tower's dtype (or float32).
                dtype = torch.float32 if tower.float32_input else self.dtype
                chunk = chunk.to(self.device, dtype if chunk.is_floating_point() else None)
                out = tower.forward(chunk) if normalised else tower.forward_unnormalised(chunk)
                outputs.append(out.float().cpu())
        return torch.cat(outputs)

    def _place(self, key: str) -> None:
        """Move one tower to (device, dtype) the first time it is used (see the module docstring)."""
        with self._place_lock:
            if key in self._placed:
                return
            for module in self.towers[key].modules:
                module.to(self.device, self.dtype)
            self._placed.add(key)

    def _check_samples(self, modality: str, samples: Tensor) -> Tower:
        """Raise InputError (or WeightsError for a tower the weights lack) before any compute;
        return the modality's tower."""
        if not isinstance(samples, Tensor):
            raise InputError(f"{modality} samples must be a torch.Tensor, got {type(samples).__name__}")
        row = get_modality(modality)
        if not row.tower:
            raise InputError(f"{modality!r} inputs are ImageBind embeddings already; there is nothing to encode")
        if row.tower not in self.towers:
            raise WeightsError(MISSING_TOWER_FIX.get(
                row.tower, f"{modality} inputs need the {row.tower!r} tower, which the loaded encoder weights lack"))
        expected = row.shape.accepted(self.config.preprocess)
        got = tuple(samples.shape[1:])
        if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
            layout = ", ".join("any" if e is None else str(e) for e in expected)
            raise InputError(f"{modality} sample has shape {list(got)}; expected [{layout}] "
                             f"({row.shape.describe(self.config.preprocess)})")
        if samples.shape[0] == 0:
            raise InputError(f"no {modality} samples to encode")
        if row.shape.dtype == "int64":
            if samples.is_floating_point():
                raise InputError(f"{modality} samples must be integer token ids, got {samples.dtype}")
        elif not torch.isfinite(samples).all():
            raise InputError(f"{modality} sample contains NaN or infinite values")
        tower = self.towers[row.tower]
        tower.check_samples(modality, samples)
        return tower


def _resolve_config(path: Path, config: EncoderConfig | str | None) -> EncoderConfig:
    if isinstance(config, EncoderConfig):
        return config
    if isinstance(config, str):
        return EncoderConfig.preset(config)
    saved = path.parent / CONFIG_FILENAME
    return EncoderConfig.from_dict(json.loads(saved.read_text())) if saved.exists() else EncoderConfig.preset("huge")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise WeightsError(
            f"encoder weights not found at {path}: download imagebind_w3D.pth (ImageBind-Huge + Point-Bind) "
            "or imagebind_huge.pth"
        )
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # mmap needs the zip format of torch >= 1.6; older files are read into memory.
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged files raise RuntimeError, EOFError, IndexError, UnpicklingError...
        raise WeightsError(
            f"cannot read {path} as a torch state dict: the file is incomplete or damaged (an interrupted "
            "download?). Download it again: `ibllm download imagebind-3d` (or imagebind-huge) "
            f"resumes and checks the size. Details: {exc}"
        ) from exc
    # Checkpoints are sometimes wrapped: {"model": {...}} or {"state_dict": {...}}.
    while isinstance(loaded, Mapping) and len(loaded) == 1 and isinstance(next(iter(loaded.values())), Mapping):
        loaded = next(iter(loaded.values()))
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise WeightsError(f"{path} is not a state dict of tensors (ImageBind .pth format expected)")
    # Weights saved from a DistributedDataParallel wrapper carry a "module." prefix.
    return {k.removeprefix("module."): v for k, v in loaded.items()}
