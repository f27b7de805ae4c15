"""Image output: the conditioning vector turned into a picture ("what the model sees").

embedding.py  the vector of reference section 13 (pre-normalisation embeddings, norm kept)
generator.py  ImageGenerator (the interface), ImageSettings, UnCLIPGenerator (Stable unCLIP)
pocket.py     PocketDecoder: the pocket world's small image decoder (offline image output)
"""

from .generator import ImageGenerator, ImageSettings, UnCLIPGenerator
from .pocket import PocketDecoder

__all__ = ["ImageGenerator", "ImageSettings", "PocketDecoder", "UnCLIPGenerator"]
