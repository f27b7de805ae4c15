"""One entry point for every modality: `load_input(modality, source)` -> one preprocessed sample.

Each row of `demo.modalities.MODALITIES` names its loader; the output layout is that row's
`shape`. Every loader takes (source, limits, cancel) and checks the
limits before the work they bound and the cancel token between steps.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from demo.cancel import CancelToken, check
from demo.errors import Cancelled, InputError
from demo.inputs.common import Source, describe, scrub_paths
from demo.inputs.limits import InputLimits
from demo.modalities import Column, Loader, get_modality

# name -> loader, read through the modality table (rows registered at run time included); each
# loader module is imported the first time its modality is used.
LOADERS: Mapping[str, Loader] = Column(lambda modality: modality.load_function())


def load_input(
    modality: str, source: Source, limits: InputLimits | None = None, *, cancel: CancelToken | None = None
) -> torch.Tensor:
    """Load and preprocess ONE sample of `modality` from a path (or in-memory object where the
    modality has one: PIL image / array for rasters, array / tensor for point, imu, embedding).

    Returns a CPU tensor laid out as `MODALITIES[modality].shape` (float32; text int64).
    Raises InputError for unusable inputs, naming the source by its file name (never its folder),
    KeyError for unknown modalities, and `Cancelled` once `cancel` is cancelled (checked between
    steps: per clip, per decoded frame, per stage).
    """
    get_modality(modality)  # KeyError listing the known modalities
    check(cancel)
    try:
        return get_modality(modality).load_function()(source, limits or InputLimits(), cancel)
    except InputError as exc:
        raise type(exc)(scrub_paths(str(exc), source)) from None
    except (Cancelled, MemoryError, ImportError, NameError):  # not the file's fault: a server problem
        raise
    except Exception as exc:  # a decoder's own error that no loader anticipated: still the user's file
        detail = scrub_paths(f"{type(exc).__name__}: {exc}", source)
        raise InputError(f"{describe(source)}: not a usable {modality} input ({detail})") from None
