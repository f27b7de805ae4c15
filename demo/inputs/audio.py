"""Audio files -> [3, 1, 128, 204] log-mel clips for ImageBind's audio tower.

Numerically the same as `imagebind.data.load_and_transform_audio_data`, except that decoding
uses soundfile (torchaudio.load needs torchcodec since torchaudio 2.9): channel 0, resample to
16 kHz, 3 clips of 2 s placed by pytorchvideo's ConstantClipsPerVideoSampler, Kaldi fbank,
pad/cut to 204 frames, normalise with AudioSet statistics.
"""

from __future__ import annotations

import torch

from demo.errors import InputError
from demo.inputs.common import Source, check_file, clip_start_times, require_finite
from demo.inputs.limits import InputLimits

SAMPLE_RATE = 16_000
CLIP_SECONDS = 2
NUM_CLIPS = 3
NUM_MEL_BINS = 128
TARGET_FRAMES = 204  # 2 s at a 10 ms shift gives 198 frames; ImageBind pads to 204
FRAME_LENGTH_MS, FRAME_SHIFT_MS = 25, 10
FBANK_MEAN, FBANK_STD = -4.268, 9.138  # AudioSet log-mel statistics used by ImageBind
MIN_SAMPLES = SAMPLE_RATE * FRAME_LENGTH_MS // 1000  # one fbank frame (400 samples)


def waveform_to_fbank(clip: torch.Tensor) -> torch.Tensor:
    """[1, samples] at 16 kHz -> [1, 128, 204] normalised log-mel (Kaldi-compatible fbank).

    Subtracts the clip's mean IN PLACE, like ImageBind: see `waveform_to_clips`.
    """
    import torchaudio

    clip -= clip.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        clip,
        htk_compat=True,
        sample_frequency=SAMPLE_RATE,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=NUM_MEL_BINS,
        dither=0.0,
        frame_length=FRAME_LENGTH_MS,
        frame_shift=FRAME_SHIFT_MS,
    )  # [frames, 128]
    fbank = fbank.T  # [128, frames]
    frames = fbank.shape[1]
    if frames < TARGET_FRAMES:
        # zero padding in log-mel units, as ImageBind does (normalised below like real frames)
        fbank = torch.nn.functional.pad(fbank, (0, TARGET_FRAMES - frames))
    fbank = fbank[:, :TARGET_FRAMES]  # [128, 204]
    return ((fbank - FBANK_MEAN) / FBANK_STD)[None]  # [1, 128, 204]


def waveform_to_clips(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Mono [1, samples] at any rate -> [3, 1, 128, 204]."""
    import torchaudio

    if sample_rate != SAMPLE_RATE:
        waveform = torchaudio.functional.resample(waveform, orig_freq=sample_rate, new_freq=SAMPLE_RATE)
    duration = waveform.shape[1] / SAMPLE_RATE
    # Clips are views of one waveform and each clip's mean is subtracted in place, so where
    # clips overlap (audio under 6 s) a later clip also carries the earlier clips' offsets.
    # ImageBind does exactly this; we keep it so that embeddings match ImageBind's.
    waveform = waveform.clone()
    clips = []
    for start in clip_start_times(duration, CLIP_SECONDS, NUM_CLIPS):
        first, last = int(start * SAMPLE_RATE), int((start + CLIP_SECONDS) * SAMPLE_RATE)
        clips.append(waveform_to_fbank(waveform[:, first:last]))
    return torch.stack(clips)  # [3, 1, 128, 204]


def load_audio(source: Source, limits: InputLimits) -> torch.Tensor:
    """Audio file (wav, flac, ogg, mp3) -> float32 [3, 1, 128, 204]."""
    import soundfile

    path = check_file(source, "audio", limits.audio_max_bytes)
    try:
        info = soundfile.info(str(path))  # header only: duration before decoding
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise InputError(f"{path}: not a readable audio file ({exc})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise InputError(f"{path}: audio contains no samples")
    if info.frames / info.samplerate > limits.audio_max_seconds:
        raise InputError(
            f"{path}: audio lasts {info.frames / info.samplerate:.0f} s, over the limit of "
            f"{limits.audio_max_seconds:.0f} s"
        )
    try:
        samples, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [n, ch]
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise InputError(f"{path}: corrupt or truncated audio ({exc})") from None
    # ImageBind keeps channel 0 of multi-channel audio; its fbank takes one channel.
    waveform = torch.from_numpy(samples[:, 0].copy())[None]  # [1, n]
    require_finite(waveform, str(path))
    if waveform.shape[1] * SAMPLE_RATE < MIN_SAMPLES * sample_rate:
        raise InputError(
            f"{path}: audio lasts {waveform.shape[1] / sample_rate * 1000:.1f} ms; at least "
            f"{FRAME_LENGTH_MS} ms (one analysis frame) is needed"
        )
    return waveform_to_clips(waveform, sample_rate)
