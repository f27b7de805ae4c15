"""One entry point for every modality: `load_input(modality, source)` -> one preprocessed sample.

The table maps each modality of `demo.modalities.MODALITIES` to its loader; the output layout
is that modality's `sample_shape`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from demo.inputs.audio import load_audio
from demo.inputs.common import Source
from demo.inputs.depth import load_depth
from demo.inputs.embedding import load_embedding
from demo.inputs.image import load_image
from demo.inputs.imu import load_imu
from demo.inputs.limits import InputLimits
from demo.inputs.points import load_points
from demo.inputs.text import load_text
from demo.inputs.thermal import load_thermal
from demo.inputs.video import load_video
from demo.modalities import get_modality

Loader = Callable[[Source, InputLimits], torch.Tensor]

LOADERS: dict[str, Loader] = {
    "image": load_image,  # [3, 224, 224]
    "video": load_video,  # [15, 3, 2, 224, 224]
    "audio": load_audio,  # [3, 1, 128, 204]
    "text": load_text,  # [77] int64
    "point": load_points,  # [8192, 3]
    "depth": load_depth,  # [1, 224, 224]
    "thermal": load_thermal,  # [1, 224, 224]
    "imu": load_imu,  # [6, 2000]
    "embedding": load_embedding,  # [1024]
}


def load_input(modality: str, source: Source, limits: InputLimits | None = None) -> torch.Tensor:
    """Load and preprocess ONE sample of `modality` from a path (or in-memory object where the
    modality has one: PIL image / array for rasters, array / tensor for point, imu, embedding).

    Returns a CPU tensor laid out as `MODALITIES[modality].sample_shape` (float32; text int64).
    Raises InputError (naming the source) for unusable inputs, KeyError for unknown modalities.
    """
    get_modality(modality)  # KeyError listing the known modalities
    return LOADERS[modality](source, limits or InputLimits())
