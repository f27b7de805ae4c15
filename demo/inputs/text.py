"""Text content -> [77] int64 token ids with ImageBind's own CLIP BPE tokenizer.

This is text as a modality to embed (a caption, a document), not the chat prompt, which the
LLM's tokenizer handles. A `str` source is a path, as for every modality; tokenize a string
held in memory with `tokenize_text`.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING

import torch

from demo.errors import InputError
from demo.inputs.common import Source, check_file
from demo.inputs.limits import InputLimits

if TYPE_CHECKING:
    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

CONTEXT_LENGTH = 77


@cache
def imagebind_tokenizer() -> SimpleTokenizer:
    """ImageBind's SimpleTokenizer with the BPE merges the package ships (built once: ~0.5 s)."""
    from demo.encoders.imagebind_import import import_imagebind_model

    import_imagebind_model()  # installs the torchvision alias that importing imagebind needs
    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

    bpe_path = files("imagebind") / "bpe" / "bpe_simple_vocab_16e6.txt.gz"
    return SimpleTokenizer(bpe_path=str(bpe_path), context_length=CONTEXT_LENGTH)


def tokenize_text(text: str) -> torch.Tensor:
    """String -> int64 [77]: <start>, BPE ids, <end>, zero padding; cut to 77 with <end> kept."""
    if not text.strip():
        raise InputError("text is empty")
    return imagebind_tokenizer()(text).long()  # [77]


def load_text(source: Source, limits: InputLimits) -> torch.Tensor:
    """UTF-8 .txt file -> int64 [77]."""
    path = check_file(source, "text", limits.text_max_bytes)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: drop a BOM written by Windows editors
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc})") from None
    if not text.strip():
        raise InputError(f"{path}: text file holds only whitespace")
    return tokenize_text(text)
