"""One entry point for every modality: `load_input(modality, source)` -> one preprocessed sample.

The table maps each modality of `demo.modalities.MODALITIES` to its loader; the output layout
is that modality's `sample_shape`. Every loader takes (source, limits, cancel) and checks the
limits before the work they bound and the cancel token between steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from demo.inputs.audio import load_audio
from demo.cancel import CancelToken, check
from demo.errors import Cancelled, InputError
from demo.inputs.common import Source, describe, scrub_paths
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

Loader = Callable[[Source, InputLimits, "CancelToken | None"], torch.Tensor]

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


def load_input(
    modality: str, source: Source, limits: InputLimits | None = None, *, cancel: CancelToken | None = None
) -> torch.Tensor:
    """Load and preprocess ONE sample of `modality` from a path (or in-memory object where the
    modality has one: PIL image / array for rasters, array / tensor for point, imu, embedding).

    Returns a CPU tensor laid out as `MODALITIES[modality].sample_shape` (float32; text int64).
    Raises InputError for unusable inputs, naming the source by its file name (never its folder),
    KeyError for unknown modalities, and `Cancelled` once `cancel` is cancelled (checked between
    steps: per clip, per decoded frame, per stage).
    """
    get_modality(modality)  # KeyError listing the known modalities
    check(cancel)
    try:
        return LOADERS[modality](source, limits or InputLimits(), cancel)
    except InputError as exc:
        raise type(exc)(scrub_paths(str(exc), source)) from None
    except (Cancelled, MemoryError, ImportError, NameError):  # not the file's fault: a server problem
        raise
    except Exception as exc:  # a decoder's own error that no loader anticipated: still the user's file
        detail = scrub_paths(f"{type(exc).__name__}: {exc}", source)
        raise InputError(f"{describe(source)}: not a usable {modality} input ({detail})") from None
