"""Depth maps -> [1, 224, 224] disparity for ImageBind's depth tower.

What ImageBind's depth tower expects (its repository ships no depth loader):
- ImageBind (like Omnivore, whose recipe it reuses) was trained on SUN RGB-D depth converted
  to disparity, `baseline * focal / depth_in_metres` with depth clipped to [0.01, 50] m (the
  conversion an ImageBind author posted, facebookresearch/omnivore#12).
- A file carries no camera intrinsics, so we use a nominal Kinect v1 (NYU-D: fx 518.86 px,
  baseline 7.5 cm). The exact constants hardly matter: the depth stem is a bias-free 16x16
  patch projection followed by LayerNorm, which cancels a global scale of the input.
- Spatially the map is treated like an image: short side to 224, centre crop 224. We resize
  with bilinear + antialias rather than bicubic, which would overshoot (negative disparity)
  at depth discontinuities.
- Pixels without a measurement (0, NaN, inf; sensors write 0) become disparity 0, "very far",
  instead of the huge value that clipping a 0 depth to 1 cm would give.

Accepted files: 16-bit PNG/TIFF in millimetres (the Kinect / SUN RGB-D / NYU convention),
.npy with float depth in metres (or integer millimetres). 8-bit images are rejected: they are
colour-mapped visualisations without units, not depth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from demo.cancel import CancelToken, check
from demo.errors import InputError
from demo.inputs.common import Source, check_file, check_shape, describe, is_path, load_npy
from demo.inputs.image import IMAGE_SIZE, open_raster
from demo.inputs.limits import InputLimits

BASELINE_M = 0.075  # Kinect v1 projector-camera baseline
FOCAL_PX = 518.857901  # NYU-D Kinect v1 fx
MIN_DEPTH_M, MAX_DEPTH_M = 0.01, 50.0


def read_depth_metres(source: Source, limits: InputLimits) -> np.ndarray:
    """Depth file or array -> float64 (H, W) depth in metres; unmeasured pixels are NaN."""
    name = describe(source)
    if is_path(source) and Path(source).suffix.lower() == ".npy":
        path = check_file(source, "depth", limits.depth_max_bytes)
        try:
            depth = load_npy(path)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{name}: not a readable .npy array ({exc})") from None
    elif isinstance(source, np.ndarray):
        depth = source
    else:
        image = open_raster(source, "depth", limits.depth_max_bytes, limits)
        if image.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            raise InputError(
                f"{name}: depth images must be 16-bit (millimetres), got Pillow mode {image.mode!r}; "
                "an 8-bit image is a visualisation without units"
            )
        depth = np.asarray(image)

    depth = np.squeeze(depth)
    if depth.ndim != 2 or min(depth.shape) == 0:
        raise InputError(f"{name}: depth must be a 2-D (H, W) map, got shape {depth.shape}")
    height, width = depth.shape
    check_shape(name, "depth map", width, height, limits.max_image_pixels, limits.max_aspect_ratio)
    if depth.dtype.kind in "iu":  # integer depth is millimetres
        depth = depth.astype(np.float64) / 1000.0
    elif depth.dtype.kind == "f":
        depth = depth.astype(np.float64)
    else:
        raise InputError(f"{name}: depth must be numeric, got dtype {depth.dtype}")
    if np.isnan(depth).any() or np.isposinf(depth).any():
        # NaN / inf are legitimate "no measurement" markers in float depth maps
        depth = np.where(np.isfinite(depth), depth, np.nan)
    if (depth < 0).any():
        raise InputError(f"{name}: depth has negative values")
    depth[depth == 0] = np.nan
    if np.isnan(depth).all():
        raise InputError(f"{name}: depth map has no valid (positive, finite) pixel")
    return depth


def depth_to_disparity(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) metres, NaN = unmeasured -> (H, W) disparity in pixels, 0 where unmeasured."""
    disparity = BASELINE_M * FOCAL_PX / np.clip(depth_m, MIN_DEPTH_M, MAX_DEPTH_M)
    return np.nan_to_num(disparity, nan=0.0)


def load_depth(source: Source, limits: InputLimits, cancel: CancelToken | None = None) -> torch.Tensor:
    """Depth map -> float32 [1, 224, 224] disparity (see the module docstring)."""
    import torchvision.transforms.functional as TF

    disparity = torch.from_numpy(depth_to_disparity(read_depth_metres(source, limits)))
    check(cancel)
    disparity = disparity.float()[None]  # [1, H, W]
    disparity = TF.resize(
        disparity, IMAGE_SIZE, interpolation=TF.InterpolationMode.BILINEAR, antialias=True
    )  # short side 224
    return TF.center_crop(disparity, IMAGE_SIZE).contiguous()  # [1, 224, 224]
