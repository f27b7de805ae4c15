"""Videos -> [15, 3, 2, 224, 224] (5 clips x 3 crops, C, T, H, W) for ImageBind's vision tower.

Reproduces `imagebind.data.load_and_transform_video_data` with PyAV instead of decord:
- 5 clips of 2 s placed by pytorchvideo's ConstantClipsPerVideoSampler (i * max(D - 2, 0) / 5);
- decord's frames of a clip [s, e) are indices ceil(fps * s) .. ceil(fps * e) - 1, i.e. the
  frames whose timestamp lies in [s, e); UniformTemporalSubsample(2) keeps the first and the
  last of them;
- /255, short side 224 (bilinear, no antialias, pytorchvideo's ShortSideScale), CLIP
  normalisation, 3 crops (left/centre/right, or top/centre/bottom for portrait video).
Instead of decoding the whole file we seek to each clip, so cost depends on 5 x 2 s, not on D
(and on the distance to the previous keyframe, bounded by `video_max_decoded_frames`).

Duration is decord's, frames / average rate, from the video stream's own metadata; when the
stream records neither a frame count nor a duration (common in .webm), the video packets are
counted (demuxing only, no decoding): the container's duration is the longest stream's, often
the audio's, and would place clips after the video has ended.

Single-frame videos (and clips holding one frame) are accepted: that frame fills both time
steps, which is what ImageBind's UniformTemporalSubsample does, and how ImageBind itself feeds
still images to the same tower (repeated into 2 frames).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from demo.cancel import CancelToken, check
from demo.errors import InputError
from demo.inputs.common import Source, check_file, check_shape, clip_start_times, describe
from demo.inputs.image import CLIP_MEAN, CLIP_STD, IMAGE_SIZE
from demo.inputs.limits import InputLimits
from demo.preprocess import RELEASE

if TYPE_CHECKING:
    import av

# The release's preprocessing (demo.preprocess); frames per clip and crops are fixed
# by `first_and_last_frames` and `three_crops` below.
CLIP_SECONDS = RELEASE.video_clip_seconds
NUM_CLIPS = RELEASE.video_clips


def stream_duration(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, name: str, max_seconds: float
) -> float:
    """Duration in seconds of the video stream (not of the container); decord's definition,
    frames / average rate, whenever the frame count is known or can be counted."""
    rate = stream.average_rate or stream.guessed_rate
    if stream.frames and rate:
        return float(stream.frames / rate)
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if rate:
        frames, max_frames = 0, math.ceil(max_seconds * rate)
        for packet in container.demux(stream):  # packets only: no decoding
            if packet.size:  # the demuxer ends with an empty flush packet
                frames += 1
                if frames > max_frames:
                    raise InputError(f"{name}: video lasts more than {max_seconds:.0f} s, the limit")
        container.seek(0)
        if frames:
            return float(frames / rate)
    elif container.duration is not None:  # no rate to count with: the container's, as a last resort
        return container.duration / 1_000_000  # AV_TIME_BASE is microseconds
    raise InputError(f"{name}: video has no duration in its metadata")


def first_and_last_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    start: Fraction,
    end: Fraction,
    budget: VideoBudget,
) -> list[np.ndarray]:
    """RGB frames (H, W, 3) uint8: the first and last frame with timestamp in [start, end)."""
    origin = stream.start_time or 0  # first timestamp, in stream.time_base units
    # Seek to the keyframe at or before `start` (offset in stream time base), then decode forward.
    container.seek(origin + math.floor(start / stream.time_base), stream=stream, backward=True)
    first = last = before = None
    for frame in container.decode(stream):
        budget.spend(frame)
        if frame.pts is None:
            raise InputError(f"{budget.name}: video frames have no timestamps")
        time = (frame.pts - origin) * stream.time_base  # exact Fraction
        if time >= end:
            break
        if time < start:
            before = frame  # fallback if the window holds no frame (variable frame rate)
            continue
        if first is None:
            first = frame
        last = frame
    if first is None:
        first = last = before
    if first is None:
        raise InputError(f"{budget.name}: no decodable frame near {float(start):.2f} s (truncated file?)")
    return [frame.to_ndarray(format="rgb24") for frame in (first, last)]


class VideoBudget:
    """Counts decoded frames against `video_max_decoded_frames`, checks each frame's own size
    (a stream may change resolution after its header) and the cancel token, per frame."""

    def __init__(self, name: str, limits: InputLimits, cancel: CancelToken | None):
        self.name, self.limits, self.cancel, self.frames = name, limits, cancel, 0

    def spend(self, frame: av.VideoFrame) -> None:
        check(self.cancel)
        self.frames += 1
        if self.frames > self.limits.video_max_decoded_frames:
            raise InputError(
                f"{self.name}: reaching the 5 clips needs more than {self.limits.video_max_decoded_frames} decoded "
                "frames (keyframes too far apart); re-encode it with a keyframe every few seconds"
            )
        check_shape(self.name, "a video frame", frame.width, frame.height,
                    self.limits.video_max_frame_pixels, self.limits.max_aspect_ratio)


def short_side_scale(clip: torch.Tensor) -> torch.Tensor:
    """[C, T, H, W] -> short side 224, long side floor(long / short * 224), as pytorchvideo."""
    _, _, height, width = clip.shape
    if width < height:
        size = (int(math.floor(height / width * IMAGE_SIZE)), IMAGE_SIZE)
    else:
        size = (IMAGE_SIZE, int(math.floor(width / height * IMAGE_SIZE)))
    # interpolate sees C as batch and T as channels: each frame is resized on its own
    return torch.nn.functional.interpolate(clip, size=size, mode="bilinear", align_corners=False)


def three_crops(clip: torch.Tensor) -> list[torch.Tensor]:
    """[C, T, H, W] -> 3 crops [C, T, 224, 224] along the long side: start, centre, end.
    Centre offsets are ceil((L - 224) / 2), as in ImageBind's uniform_crop."""
    _, _, height, width = clip.shape
    y_centre = math.ceil((height - IMAGE_SIZE) / 2)
    x_centre = math.ceil((width - IMAGE_SIZE) / 2)
    if height > width:
        offsets = [(0, x_centre), (y_centre, x_centre), (height - IMAGE_SIZE, x_centre)]
    else:
        offsets = [(y_centre, 0), (y_centre, x_centre), (y_centre, width - IMAGE_SIZE)]
    return [clip[:, :, y : y + IMAGE_SIZE, x : x + IMAGE_SIZE] for y, x in offsets]


def frames_to_views(frames: list[np.ndarray]) -> list[torch.Tensor]:
    """Two RGB frames of one clip -> 3 normalised views [3, 2, 224, 224]."""
    clip = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float() / 255.0  # [3, 2, H, W]
    clip = short_side_scale(clip)
    mean = torch.tensor(CLIP_MEAN)[:, None, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None, None]
    return three_crops((clip - mean) / std)


def load_video(source: Source, limits: InputLimits, cancel: CancelToken | None = None) -> torch.Tensor:
    """Video file -> float32 [15, 3, 2, 224, 224], clip-major (clip 0 crops 0-2, clip 1, ...)."""
    import av

    path: Path = check_file(source, "video", limits.video_max_bytes)
    name = describe(source)
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise InputError(f"{name}: not a readable video ({exc})") from None
    with container:
        if not container.streams.video:
            raise InputError(f"{name}: file has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height == 0:
            raise InputError(f"{name}: video stream has no frame size (corrupt header?)")
        check_shape(name, "each frame", width, height, limits.video_max_frame_pixels, limits.max_aspect_ratio)
        budget = VideoBudget(name, limits, cancel)
        views = []
        try:
            duration = stream_duration(container, stream, name, limits.video_max_seconds)
            if duration > limits.video_max_seconds:
                raise InputError(f"{name}: video lasts {duration:.0f} s, over the limit of {limits.video_max_seconds:.0f} s")
            if duration <= 0:
                raise InputError(f"{name}: video has zero duration")
            for start in clip_start_times(duration, CLIP_SECONDS, NUM_CLIPS):
                frames = first_and_last_frames(container, stream, start, start + CLIP_SECONDS, budget)
                views += frames_to_views(frames)
        except av.FFmpegError as exc:
            raise InputError(f"{name}: corrupt video ({exc})") from None
    return torch.stack(views).contiguous()  # [15, 3, 2, 224, 224]
