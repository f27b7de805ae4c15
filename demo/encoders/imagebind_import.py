"""Import Meta's ImageBind (PyPI `imagebind-unofficial`) on current torchvision.

pytorchvideo 0.1.5, imported by `imagebind.data`, still imports the module
`torchvision.transforms.functional_tensor`, which torchvision renamed to `_functional_tensor`.
Aliasing the old name is the one compatibility line the install needs.
"""

from __future__ import annotations

import sys
import warnings


def import_imagebind_model():
    """Return the module `imagebind.models.imagebind_model` (imports torch, torchvision)."""
    import torchvision.transforms._functional_tensor as functional_tensor

    sys.modules.setdefault("torchvision.transforms.functional_tensor", functional_tensor)
    try:
        with warnings.catch_warnings():
            # imagebind's package __init__ imports pkg_resources (setuptools<81), which warns
            # on every start; the pin in requirements.txt is the fix, the warning is noise.
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            from imagebind.models import imagebind_model
    except ImportError as exc:  # say which package to install, not just the traceback
        raise ImportError(
            f"ImageBind could not be imported ({exc}). Install the pinned requirements: "
            "pip install -r requirements.txt (package imagebind-unofficial)."
        ) from exc
    return imagebind_model
