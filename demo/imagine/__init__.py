"""Image output: the conditioning vector turned into a picture ("what the model sees").

embedding.py  the vector of reference section 13 (pre-normalisation embeddings, norm kept)
generator.py  ImageGenerator (the interface), ImageSettings, UnCLIPGenerator (Stable unCLIP)
"""

from .generator import ImageGenerator, ImageSettings, UnCLIPGenerator

__all__ = ["ImageGenerator", "ImageSettings", "UnCLIPGenerator"]
