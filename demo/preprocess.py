"""How raw inputs become the tensors an encoder was trained on: sizes, rates, counts, statistics.

These numbers belong to the encoder, not to the loaders: a tower trained on 224-pixel CLIP-
normalised crops needs exactly those, whoever reads the file. So they travel with the encoder's
config (`EncoderConfig.preprocess`, saved in `encoder_config.json`), as open_clip keeps its
`preprocess_cfg` in the model config; the loaders read the release's values from `RELEASE`, and
the encoder checks every sample against the layout its own config gives (`demo.modalities`).

This module imports nothing heavy: the modality table and every loader read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class PreprocessConfig:
    """ImageBind's preprocessing (reference section 2); the defaults are the release's."""

    image_size: int = 224  # short side resized to this, then a centre crop (image, depth, thermal, video)
    # CLIP's normalisation, which ImageBind's frozen vision tower was trained with.
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    video_clips: int = 5  # clips of `video_clip_seconds` per video, each in `video_crops` crops
    video_clip_seconds: float = 2
    video_frames: int = 2  # frames kept per clip (ImageBindModel's `video_frames`)
    video_crops: int = 3
    audio_sample_rate: int = 16_000
    audio_clips: int = 3
    audio_clip_seconds: float = 2
    audio_num_mel_bins: int = 128  # ImageBindModel's `audio_num_mel_bins`
    audio_target_len: int = 204  # fbank frames per clip (ImageBindModel's `audio_target_len`)
    text_context: int = 77  # CLIP BPE tokens per text, <start> and <end> included
    imu_channels: int = 6  # acc xyz, gyro xyz
    imu_steps: int = 2000
    point_count: int = 8192  # points per cloud after farthest point sampling (Point-Bind)

    @property
    def video_views(self) -> int:
        """Clips x crops: the views of one video that the vision tower averages."""
        return self.video_clips * self.video_crops

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PreprocessConfig:
        """Saved values over the release's (an `encoder_config.json` written before this field
        existed has none: it is the release's). Unknown keys are refused, naming the known ones."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing settings {unknown}; known: {', '.join(sorted(known))}")
        for name in ("image_mean", "image_std"):  # JSON gives lists
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)


RELEASE = PreprocessConfig()  # what the released ImageBind-Huge and Point-Bind were trained with
