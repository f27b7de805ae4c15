"""Resource limits for user inputs, checked before (or while) decoding so a hostile or
accidental huge file fails fast with an `InputError` instead of exhausting memory or time.

Override any field: `InputLimits(video_max_seconds=60)` or `dataclasses.replace(limits, ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class InputLimits:
    # --- raster inputs (image, depth, thermal) ---
    # 64 MP: a 8000 x 8000 photo decodes to ~190 MB RGB. Checked from the header (before
    # decoding), so a decompression bomb (tiny file, huge canvas) is rejected without decoding.
    max_image_pixels: int = 64_000_000
    image_max_bytes: int = 50 * MiB  # large camera JPEGs/PNGs are 5-30 MB
    depth_max_bytes: int = 50 * MiB
    thermal_max_bytes: int = 50 * MiB

    # --- video ---
    video_max_bytes: int = 500 * MiB
    # Only 5 two-second clips are decoded (by seeking), so time grows slowly with duration;
    # the cap mainly bounds seeking in pathological files. Read from container metadata.
    video_max_seconds: float = 600.0
    video_max_frame_pixels: int = 3840 * 2160  # 4K UHD; each kept frame is resized to 224

    # --- audio ---
    audio_max_bytes: int = 100 * MiB
    # The whole track is decoded and resampled (as ImageBind does): 10 min of 48 kHz mono is
    # 115 MB of float32. Read from the file header before decoding.
    audio_max_seconds: float = 600.0

    # --- text ---
    # Only the first 77 BPE tokens are kept, but the tokenizer reads the whole text.
    text_max_bytes: int = 64 * 1024

    # --- point clouds ---
    point_max_bytes: int = 512 * MiB  # a binary PLY of 10^7 xyz float32 points is 120 MB
    point_max_count: int = 10_000_000
    # Below this the cloud is too sparse to describe a shape: Point-BERT groups 32 neighbours.
    point_min_count: int = 32

    # --- IMU ---
    imu_max_bytes: int = 50 * MiB
    imu_max_steps: int = 1_000_000  # 83 min at 200 Hz; the series is resampled to 2000 steps

    # --- precomputed embeddings ---
    embedding_max_bytes: int = 1 * MiB  # a 1024-d float32 vector is 4 KB plus headers

    # --- the chat prompt ---
    # Characters of question + "input" field + kept earlier turns, counted before tokenising:
    # LLaMA-1's 2048-token context holds about 8,000 characters of English, so a longer prompt
    # cannot fit anyway, and tokenising megabytes of text (once per dropped turn) would stall a
    # worker. Older turns beyond the budget are dropped; a question alone over it is an error.
    prompt_max_chars: int = 16_000
