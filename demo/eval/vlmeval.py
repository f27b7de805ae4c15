"""A VLMEvalKit model: `generate(message, dataset=None)` over the pipeline.

VLMEvalKit (open-compass, not on PyPI: installed from its repository) calls
`model.generate(message, dataset)` with `message` a list of `{"type": "image"|"video"|"audio"|"text",
"value": path or text}` dicts (or bare strings: paths and text), which its `BaseModel` turns into
that form before calling `generate_inner`. To add the model to a VLMEvalKit checkout, put in
`vlmeval/config.py`:

    from functools import partial
    from demo.eval.vlmeval import ImageBindLLMVLM
    supported_VLM["imagebind_llm"] = partial(ImageBindLLMVLM, pretrained="weights/converted/7B")

With VLMEvalKit installed the class subclasses its `BaseModel`; without it, it keeps the same
interface (its own `generate`), so it can be used and tested alone.
"""

from __future__ import annotations

import os

from ..cache import RetrievalSettings
from ..config import GenerationConfig
from .adapters import Scratch, modality_of_path, to_inputs

try:  # VLMEvalKit's base class when it is installed
    from vlmeval.vlm.base import BaseModel
except ImportError:  # the same interface, for use without VLMEvalKit
    BaseModel = object


class ImageBindLLMVLM(BaseModel):
    INTERLEAVE = False  # every input is mixed into one conditioning vector; text order is not kept
    allowed_types = ["text", "image", "video", "audio"]

    def __init__(self, pretrained: str = "pocket", pipeline=None, cache: RetrievalSettings | None = None,
                 generation: GenerationConfig | None = None, **load_kwargs) -> None:
        if BaseModel is not object:
            super().__init__()
        if pipeline is None:
            from ..pipeline import ImageBindLLMPipeline

            pipeline = ImageBindLLMPipeline.from_pretrained(pretrained, **load_kwargs)
        self.pipe = pipeline
        self.cache = cache or RetrievalSettings(enabled=False)
        self.generation = generation or GenerationConfig(max_new_tokens=128, temperature=0.0)

    @staticmethod
    def normalise(message) -> list[dict]:
        """Strings -> {"type", "value"} dicts as VLMEvalKit's BaseModel.preprocess_message does:
        an existing file's path is media (typed by suffix), anything else is text."""
        if isinstance(message, str):
            message = [message]
        out = []
        for part in message:
            if isinstance(part, dict):
                out.append(part)
            elif isinstance(part, (str, os.PathLike)) and os.path.isfile(part):
                out.append({"type": modality_of_path(part), "value": str(part)})
            else:
                out.append({"type": "text", "value": str(part)})
        return out

    def generate_inner(self, message, dataset=None) -> str:
        parts = self.normalise(message)
        question = "\n".join(p["value"] for p in parts if p["type"] == "text").strip()
        media = [p["value"] for p in parts if p["type"] != "text"]
        with Scratch() as scratch:
            return self.pipe(question, to_inputs(media, scratch), generation=self.generation, cache=self.cache).text

    if BaseModel is object:
        def generate(self, message, dataset=None) -> str:
            return self.generate_inner(self.normalise(message), dataset)
