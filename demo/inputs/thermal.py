"""Thermal images -> [1, 224, 224] for ImageBind's thermal tower.

ImageBind's thermal data (LLVIP) are 8-bit grayscale infrared frames, and its repository ships
no thermal loader. We follow the vision pipeline without its RGB statistics: grayscale,
short side 224 (bicubic), centre crop, values in [0, 1], no mean/std normalisation. Reported
LLVIP reproductions score better without a normalisation, and the thermal stem (a bias-free
16x16 patch projection followed by LayerNorm) is invariant to a global rescaling of the input
anyway, so only the offset choice matters.
"""

from __future__ import annotations

import torch

from demo.cancel import CancelToken, check
from demo.inputs.common import Source
from demo.inputs.image import HIGH_BIT_MODES, high_bit_to_uint8, open_raster, resize_and_crop
from demo.inputs.limits import InputLimits


def load_thermal(source: Source, limits: InputLimits, cancel: CancelToken | None = None) -> torch.Tensor:
    """Grayscale (or colour, converted to luma) image -> float32 [1, 224, 224] in [0, 1].

    16-bit radiometric frames are contrast-stretched (min..max -> 0..1), as a thermal camera's
    automatic gain control does when it writes 8-bit video: raw counts span a narrow band of
    the 16-bit range and would otherwise be a flat grey.
    """
    import torchvision.transforms.functional as TF

    image = open_raster(source, "thermal", limits.thermal_max_bytes, limits)
    if image.mode in HIGH_BIT_MODES:
        image = high_bit_to_uint8(image, stretch=True)
    image = image.convert("L")  # colour-mapped frames: ITU-R 601 luma
    check(cancel)
    return TF.to_tensor(resize_and_crop(image))  # [1, 224, 224]
