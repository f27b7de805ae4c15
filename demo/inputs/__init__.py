"""Users' files -> preprocessed ImageBind input tensors, one modality per module.

    from demo.inputs import load_input
    pixels = load_input("image", "cat.jpg")  # [3, 224, 224]

Decoders (PyAV, soundfile, open3d) are imported only by the loader that needs them.
"""

from demo.inputs.limits import InputLimits
from demo.inputs.registry import LOADERS, load_input
from demo.inputs.text import tokenize_text

__all__ = ["LOADERS", "InputLimits", "load_input", "tokenize_text"]
