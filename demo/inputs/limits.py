"""Resource limits for user inputs, checked before (or while) decoding so a hostile or
accidental huge file fails fast with an `InputError` instead of exhausting memory or time.

This is the one budget per request: every loader, the encoder entry points and the pipeline's
prompt building read it, so the app and every API share it. Each limit is checked from headers
or counts BEFORE the work it bounds (decoding, resizing, resampling, tokenising); the expected
cost of a request within the limits is listed in docs/robustness.md.

Override any field: `InputLimits(video_max_seconds=60)` or `dataclasses.replace(limits, ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class InputLimits:
    """The resource budget of one request (see the module docstring); every field has its reason beside it."""

    # --- raster inputs (image, depth, thermal) ---
    # 64 MP: a 8000 x 8000 photo decodes to ~190 MB RGB. Checked from the header (before
    # decoding), so a decompression bomb (tiny file, huge canvas) is rejected without decoding.
    max_image_pixels: int = 64_000_000
    # Long side / short side, for images, depth, thermal and video frames. The short side is
    # resized to 224 (as ImageBind does), so the resized long side is 224 x this ratio: 20 keeps
    # it under 4,480 px (3 MB of RGB) where a 10000x1 PNG would otherwise become 2,240,000 x 224
    # (1.5 GB). Phone panoramas are under 10:1. More elongated inputs are refused, not cropped:
    # ImageBind would keep a 224-px sliver of them, which is not what the user meant either.
    max_aspect_ratio: float = 20.0
    image_max_bytes: int = 50 * MiB  # large camera JPEGs/PNGs are 5-30 MB
    depth_max_bytes: int = 50 * MiB
    thermal_max_bytes: int = 50 * MiB

    # --- video ---
    video_max_bytes: int = 500 * MiB
    # Only 5 two-second clips are decoded (by seeking), so time grows slowly with duration;
    # the cap mainly bounds seeking in pathological files. Read from container metadata.
    video_max_seconds: float = 600.0
    video_max_frame_pixels: int = 3840 * 2160  # 4K UHD; each kept frame is resized to 224
    # Frames decoded (not kept) per video: seeking lands on the keyframe before each clip and
    # decodes forward, so a file with one keyframe would decode every frame. 5 clips x (a 10 s
    # keyframe interval + 2 s) at 60 fps is 3,600.
    video_max_decoded_frames: int = 20_000

    # --- audio ---
    audio_max_bytes: int = 100 * MiB
    # The whole track is decoded and resampled (as ImageBind does): 10 min of 48 kHz mono is
    # 115 MB of float32. Read from the file header before decoding.
    audio_max_seconds: float = 600.0
    # Decoded values (frames x channels), read in one bounded call whatever the header says:
    # 64 M float32 is 256 MB; 10 min of 48 kHz stereo is 57.6 M.
    audio_max_samples: int = 64_000_000
    # Sample rates accepted. Common rates (8 k ... 192 k) are resampled exactly as ImageBind
    # does (torchaudio's sinc kernel, whose size grows with rate / gcd(rate, 16000)); rates
    # sharing no small factor with 16 kHz (16001 Hz: a 2 GB kernel) go through soxr, whose
    # cost is linear in the samples whatever the rate. See demo/inputs/audio.py.
    audio_min_sample_rate: int = 4_000
    audio_max_sample_rate: int = 384_000

    # --- text ---
    # Only the first 77 BPE tokens are kept, but the tokenizer reads the whole text.
    text_max_bytes: int = 64 * 1024
    # Characters of one word (a run of letters, as the CLIP tokenizer splits text). Its BPE is
    # quadratic in word length (a 65 KB word: 36 s); English words are under 30 characters, and
    # a 1,000-letter word takes 10 ms. Longer words are refused (cutting them would change ids).
    text_max_word_chars: int = 1_000

    # --- point clouds ---
    point_max_bytes: int = 512 * MiB  # a binary PLY of 10^7 xyz float32 points is 120 MB
    point_max_count: int = 10_000_000
    # Below this the cloud is too sparse to describe a shape: Point-BERT groups 32 neighbours.
    point_min_count: int = 32
    # Bytes the reader may allocate for a cloud, checked from the header (PLY/PCD counts x row
    # size, .npz/.pt member sizes) before reading: 10^7 points of x, y, z in float64 are 240 MB.
    point_max_decoded_bytes: int = 256 * MiB
    # .obj meshes: only `v` and `f` lines are read (never mtllib / textures); vertices count
    # against point_max_count, and faces against this.
    point_max_faces: int = 5_000_000

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
    # The budget above counts the template too ("### Instruction:" ... per turn). Beyond this
    # many earlier turns the oldest are dropped before anything is counted: each turn adds about
    # a dozen tokens of template ("### Instruction:", "### Response:", line breaks), so a few
    # hundred turns cannot fit LLaMA's 2,048-token context anyway.
    prompt_max_turns: int = 256

    # --- work running at once ---
    # Encodings (load + ImageBind) running at the same time in one pipeline. A request holds its
    # slot until its work really stops: a cancelled request keeps it until its next check.
    max_running_encodes: int = 1
