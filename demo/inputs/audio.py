"""Audio files -> [3, 1, 128, 204] log-mel clips for ImageBind's audio tower.

Numerically the same as `imagebind.data.load_and_transform_audio_data`, except that decoding
uses soundfile (torchaudio.load needs torchcodec since torchaudio 2.9): every channel resampled
to 16 kHz, 3 clips of 2 s placed by pytorchvideo's ConstantClipsPerVideoSampler; per clip the
mean of ALL channels is subtracted in place, then Kaldi fbank reads channel 0; pad/cut to 204
frames, normalise with AudioSet statistics.

Resampling: torchaudio's sinc resampler (ImageBind's) builds a kernel of about
(16000 / g) x (rate / g) values, g = gcd(rate, 16000): tiny for every common rate (44.1 kHz:
76 k values), 2 GB for 16001 Hz. Rates whose kernel would exceed RESAMPLE_KERNEL_MAX go through
soxr instead (linear cost whatever the rate; its anti-aliasing filter differs from torchaudio's
near 8 kHz: on white noise resampled from 44.1 kHz, log-mel clips differ by 0.007 on average,
at most 0.8 in the top mel bins), so common rates stay bit-identical to ImageBind.
"""

from __future__ import annotations

import math

import torch

from demo.cancel import CancelToken, check
from demo.errors import InputError
from demo.inputs.common import Source, check_file, clip_start_times, describe, require_finite
from demo.inputs.limits import InputLimits
from demo.preprocess import RELEASE

# The release's preprocessing (demo.preprocess).
SAMPLE_RATE = RELEASE.audio_sample_rate
CLIP_SECONDS = RELEASE.audio_clip_seconds
NUM_CLIPS = RELEASE.audio_clips
NUM_MEL_BINS = RELEASE.audio_num_mel_bins
TARGET_FRAMES = RELEASE.audio_target_len  # 2 s at a 10 ms shift gives 198 frames; ImageBind pads to 204
FRAME_LENGTH_MS, FRAME_SHIFT_MS = 25, 10
FBANK_MEAN, FBANK_STD = -4.268, 9.138  # AudioSet log-mel statistics used by ImageBind
MIN_SAMPLES = SAMPLE_RATE * FRAME_LENGTH_MS // 1000  # one fbank frame (400 samples)
# Above this many kernel values (8 MB in float64) torchaudio's resampler is replaced by soxr.
# The largest common case, 11.025 kHz, needs 0.29 M.
RESAMPLE_KERNEL_MAX = 1_000_000
LOWPASS_FILTER_WIDTH = 6  # torchaudio.functional.resample's default, which ImageBind uses


def sinc_kernel_size(rate: int) -> int:
    """Values in torchaudio's resampling kernel from `rate` to 16 kHz: [new, 1, orig + 2 width]
    with orig, new = rate, 16000 divided by their gcd (torchaudio's _get_sinc_resample_kernel)."""
    g = math.gcd(rate, SAMPLE_RATE)
    orig, new = rate // g, SAMPLE_RATE // g
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / min(orig, new) / 0.99)  # rolloff 0.99
    return new * (orig + 2 * width)


def resample(waveform: torch.Tensor, rate: int) -> torch.Tensor:
    """[channels, n] at `rate` -> [channels, m] at 16 kHz, exactly as ImageBind for common rates
    and at a cost linear in n for the others (see the module docstring)."""
    if rate == SAMPLE_RATE:
        return waveform
    if sinc_kernel_size(rate) <= RESAMPLE_KERNEL_MAX:
        import torchaudio

        return torchaudio.functional.resample(waveform, orig_freq=rate, new_freq=SAMPLE_RATE)
    import soxr

    out = soxr.resample(waveform.T.numpy(), rate, SAMPLE_RATE, quality="VHQ")  # (m, channels)
    return torch.from_numpy(out.T.copy())


def waveform_to_fbank(clip: torch.Tensor) -> torch.Tensor:
    """[channels, samples] at 16 kHz -> [1, 128, 204] normalised log-mel of channel 0.

    Subtracts the mean of all channels IN PLACE, like ImageBind: see `waveform_to_clips`.
    """
    import torchaudio

    clip -= clip.mean()  # over every channel; Kaldi's fbank then reads channel 0 only
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


def waveform_to_clips(waveform: torch.Tensor, sample_rate: int, cancel: CancelToken | None = None) -> torch.Tensor:
    """[channels, samples] at any rate -> [3, 1, 128, 204]."""
    waveform = resample(waveform, sample_rate)
    duration = waveform.shape[1] / SAMPLE_RATE
    # Clips are views of one waveform and each clip's mean is subtracted in place, so where
    # clips overlap (audio under 8 s: 3 clips of 2 s start 0, (D - 2) / 3 and 2 (D - 2) / 3) a
    # later clip also carries the earlier clips' offsets, on every channel. ImageBind does
    # exactly this; we keep it so that embeddings match ImageBind's.
    waveform = waveform.clone()
    clips = []
    for start in clip_start_times(duration, CLIP_SECONDS, NUM_CLIPS):
        check(cancel)
        first, last = int(start * SAMPLE_RATE), int((start + CLIP_SECONDS) * SAMPLE_RATE)
        clips.append(waveform_to_fbank(waveform[:, first:last]))
    return torch.stack(clips)  # [3, 1, 128, 204]


def load_audio(source: Source, limits: InputLimits, cancel: CancelToken | None = None) -> torch.Tensor:
    """Audio file (wav, flac, ogg, mp3) -> float32 [3, 1, 128, 204]."""
    import soundfile

    path = check_file(source, "audio", limits.audio_max_bytes)
    name = describe(source)
    try:
        with soundfile.SoundFile(str(path)) as sound:  # the header: rate, channels, claimed length
            rate, channels, frames = sound.samplerate, sound.channels, sound.frames
            if frames <= 0 or rate <= 0 or channels <= 0:
                raise InputError(f"{name}: audio contains no samples")
            if not limits.audio_min_sample_rate <= rate <= limits.audio_max_sample_rate:
                raise InputError(
                    f"{name}: sample rate {rate} Hz is outside the accepted {limits.audio_min_sample_rate}-"
                    f"{limits.audio_max_sample_rate} Hz; convert it to 16 or 48 kHz"
                )
            if frames / rate > limits.audio_max_seconds:
                raise InputError(
                    f"{name}: audio lasts {frames / rate:.0f} s, over the limit of {limits.audio_max_seconds:.0f} s"
                )
            max_frames = limits.audio_max_samples // channels
            if frames > max_frames:
                raise InputError(
                    f"{name}: audio holds {frames} x {channels} samples, over the limit of {limits.audio_max_samples}"
                )
            check(cancel)
            # At most max_frames + 1, whatever the header claimed (compressed formats estimate it).
            samples = sound.read(frames=max_frames + 1, dtype="float32", always_2d=True)  # [n, channels]
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise InputError(f"{name}: not a readable audio file ({exc})") from None
    if len(samples) > max_frames:
        raise InputError(f"{name}: audio holds more than {limits.audio_max_samples} samples (limit)")
    if len(samples) == 0:
        raise InputError(f"{name}: audio contains no samples")
    waveform = torch.from_numpy(samples.T.copy())  # [channels, n]: ImageBind keeps every channel
    require_finite(waveform, name)
    if waveform.shape[1] * SAMPLE_RATE < MIN_SAMPLES * rate:
        raise InputError(
            f"{name}: audio lasts {waveform.shape[1] / rate * 1000:.1f} ms; at least "
            f"{FRAME_LENGTH_MS} ms (one analysis frame) is needed"
        )
    check(cancel)
    return waveform_to_clips(waveform, rate, cancel)
