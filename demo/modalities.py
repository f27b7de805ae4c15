"""The table of input modalities: one row per modality, looked up by name.

Every other module asks this table instead of testing strings: which ImageBind tower encodes a
modality, which file suffixes it accepts, and the shape of one preprocessed sample.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Modality:
    name: str  # our key, also used in the API ("image", "audio", ...)
    label: str  # human-readable, for the UI
    imagebind_key: str  # key of ImageBind's ModalityType / model towers
    suffixes: tuple[str, ...]  # accepted file suffixes, lower case, with dot
    sample_shape: str  # layout of ONE preprocessed sample, as the encoder receives it


MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality("image", "Image", "vision", (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"), "[3, 224, 224]"),
        Modality("video", "Video", "vision", (".mp4", ".webm", ".mov", ".avi", ".mkv"), "[15, 3, 2, 224, 224] (5 clips x 3 crops, C, T, H, W)"),
        Modality("audio", "Audio", "audio", (".wav", ".flac", ".ogg", ".mp3"), "[3, 1, 128, 204] (3 clips of Kaldi fbank)"),
        Modality("text", "Text", "text", (".txt",), "[77] int64 token ids"),
        Modality("point", "Point cloud", "point", (".ply", ".pcd", ".xyz", ".pts", ".npy", ".npz", ".obj", ".pt"), "[8192, 3] float32"),
        Modality("depth", "Depth", "depth", (".png", ".npy", ".tif", ".tiff"), "[1, 224, 224]"),
        Modality("thermal", "Thermal", "thermal", (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"), "[1, 224, 224]"),
        Modality("imu", "IMU", "imu", (".npy", ".csv"), "[6, 2000]"),
        # A precomputed 1024-d ImageBind embedding (.npy / .pt), for researchers.
        Modality("embedding", "Embedding", "", (".npy", ".pt", ".safetensors"), "[1024] float32"),
    )
}


def get_modality(name: str) -> Modality:
    try:
        return MODALITIES[name]
    except KeyError:
        raise KeyError(f"unknown modality {name!r}; known: {', '.join(MODALITIES)}") from None
