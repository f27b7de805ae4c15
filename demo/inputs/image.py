"""Images -> [3, 224, 224] for ImageBind's vision tower (ImageBind's own CLIP preprocessing).

Also home of the raster helpers that depth and thermal reuse: safe opening (size checks
before decoding) and the short-side resize + centre crop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from demo.cancel import CancelToken, check
from demo.errors import InputError
from demo.inputs.common import Source, check_file, check_shape, describe, is_path
from demo.inputs.limits import InputLimits
from demo.modalities import get_modality
from demo.preprocess import RELEASE

if TYPE_CHECKING:
    from PIL import Image

# The release's preprocessing (demo.preprocess): CLIP's size and normalisation.
IMAGE_SIZE = RELEASE.image_size
CLIP_MEAN = RELEASE.image_mean
CLIP_STD = RELEASE.image_std

# Pillow modes holding more than 8 bits per sample (16-bit PNG/TIFF, 32-bit int, float).
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def pillow_formats(modality: str) -> list[str]:
    """Pillow format names of the suffixes `modality` documents (".png" -> "PNG").

    Pillow otherwise guesses a file's format from its content among every plugin it has, and
    some plugins run outside programs: a ".png" holding PostScript would be handed to Ghostscript
    by the EPS plugin. Opening with only these formats never reaches such a plugin."""
    from PIL import Image

    Image.init()  # registers every plugin's extensions
    extensions = Image.registered_extensions()
    return sorted({extensions[suffix] for suffix in get_modality(modality).suffixes if suffix in extensions})


def open_raster(source: Source, modality: str, max_bytes: int, limits: InputLimits) -> Image.Image:
    """Open a path / PIL image / array as a decoded PIL image, upright (EXIF orientation).

    The pixel count and aspect ratio are checked from the header before any pixel is decoded,
    so a decompression bomb or a 10000x1 strip costs nothing.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = describe(source)
    if is_path(source):
        path = check_file(source, modality, max_bytes)
        try:
            image = Image.open(path, formats=pillow_formats(modality))  # reads the header only
        except Image.DecompressionBombError as exc:
            raise InputError(f"{name}: image too large ({exc})") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise InputError(f"{name}: not a readable image ({exc})") from None
    elif isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        try:
            image = Image.fromarray(source)
        except TypeError as exc:
            raise InputError(f"{name}: array is not an image (HxW or HxWx3/4, uint8) ({exc})") from None
    else:
        raise InputError(f"{name}: expected a file path, PIL image or numpy array")

    width, height = image.size
    check_shape(name, "image", width, height, limits.max_image_pixels, limits.max_aspect_ratio)
    try:
        image.load()  # decode now, so truncated files fail here with a clear message
        return ImageOps.exif_transpose(image)  # phone photos store rotation as EXIF only
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: corrupt or truncated image ({exc})") from None


def high_bit_to_uint8(image: Image.Image, stretch: bool) -> Image.Image:
    """16-bit / int / float image -> 8-bit "L". Pillow's own convert would clip at 255.

    stretch=False maps the full 16-bit range linearly (x / 257), keeping absolute brightness;
    stretch=True maps [min, max] to [0, 255] (used for float images, which have no fixed white
    level, and for thermal counts, whose useful range is a narrow band).
    """
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)  # (H, W)
    if stretch or image.mode == "F":
        finite = values[np.isfinite(values)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        values = (np.nan_to_num(values, nan=low) - low) / max(high - low, 1e-12) * 255.0
    else:
        values = values / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Transparency is composited onto white, not dropped: dropping
    alpha (ImageBind's `convert("RGB")`) exposes whatever colour hides under transparent
    pixels, often black, which turns a logo on a transparent page into a black square."""
    from PIL import Image

    if image.mode in HIGH_BIT_MODES:
        image = high_bit_to_uint8(image, stretch=False)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_and_crop(image: Image.Image) -> Image.Image:
    """Short side -> 224 (bicubic, Pillow's antialiasing resize), then centre crop 224x224.

    Same calls as torchvision's Resize(224, BICUBIC) + CenterCrop(224) in ImageBind's loader.
    """
    import torchvision.transforms.functional as TF

    image = TF.resize(image, IMAGE_SIZE, interpolation=TF.InterpolationMode.BICUBIC)
    return TF.center_crop(image, IMAGE_SIZE)


def load_image(source: Source, limits: InputLimits, cancel: CancelToken | None = None) -> torch.Tensor:
    """Image file / PIL image / uint8 array -> float32 [3, 224, 224], CLIP-normalised."""
    import torchvision.transforms.functional as TF

    image = to_rgb(open_raster(source, "image", limits.image_max_bytes, limits))
    check(cancel)  # decoded; the resize is the other costly step
    pixels = TF.to_tensor(resize_and_crop(image))  # [3, 224, 224] in [0, 1]
    return TF.normalize(pixels, CLIP_MEAN, CLIP_STD)
