"""Text content -> [77] int64 token ids with ImageBind's own CLIP BPE tokenizer.

This is text as a modality to embed (a caption, a document), not the chat prompt, which the
LLM's tokenizer handles. A `str` source is a path, as for every modality; tokenize a string
held in memory with `tokenize_text`.

ImageBind's `SimpleTokenizer` is used with its own merges and regular expression, with three
bounds around it and identical ids for every text it accepts:
- it BPE-encodes every word of the text and then keeps 75 ids; we stop after the word that
  reaches 75 (later words cannot change earlier ids: each word is encoded on its own);
- its BPE is quadratic in a word's length: words over `text_max_word_chars` are refused;
- it caches every word it has seen, forever: the cache is an LRU of CACHE_WORDS words.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING

import torch

from demo.cancel import CancelToken, check
from demo.errors import InputError
from demo.inputs.common import Source, check_file, describe
from demo.inputs.limits import InputLimits
from demo.preprocess import RELEASE

if TYPE_CHECKING:
    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

CONTEXT_LENGTH = RELEASE.text_context  # the release's preprocessing (demo.preprocess)
CACHE_WORDS = 10_000  # a few MB at most; common words stay cached


class BoundedCache(OrderedDict):
    """The tokenizer's word -> BPE cache, as a least-recently-used map of `size` words.

    The entries present when it is installed (the two special tokens, which `bpe` must find
    here to keep them whole) are pinned and never evicted."""

    def __init__(self, pinned: dict[str, str], size: int) -> None:
        self.pinned, self.size = frozenset(pinned), size  # before the entries: __setitem__ reads them
        super().__init__(pinned)

    def __getitem__(self, key: str) -> str:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size + len(self.pinned):
            oldest = next(key for key in self if key not in self.pinned)
            del self[oldest]


@cache
def imagebind_tokenizer() -> SimpleTokenizer:
    """ImageBind's SimpleTokenizer with the BPE merges the package ships (built once: ~0.5 s)."""
    from demo.encoders.imagebind_import import import_imagebind_model

    import_imagebind_model()  # installs the torchvision alias that importing imagebind needs
    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

    bpe_path = files("imagebind") / "bpe" / "bpe_simple_vocab_16e6.txt.gz"
    tokenizer = SimpleTokenizer(bpe_path=str(bpe_path), context_length=CONTEXT_LENGTH)
    tokenizer.cache = BoundedCache(tokenizer.cache, CACHE_WORDS)
    return tokenizer


def tokenize_text(
    text: str, limits: InputLimits | None = None, name: str = "text", cancel: CancelToken | None = None
) -> torch.Tensor:
    """String -> int64 [77]: <start>, BPE ids, <end>, zero padding; cut to 77 with <end> kept.

    The same ids as ImageBind's `SimpleTokenizer()(text)`, at a cost bounded by the limits."""
    limits = limits or InputLimits()
    if not text.strip():
        raise InputError(f"{name}: no text to encode (it is empty or blank)")
    if len(text.encode("utf-8", "surrogatepass")) > limits.text_max_bytes:
        raise InputError(f"{name}: text is over the limit of {limits.text_max_bytes} bytes")
    tokenizer = imagebind_tokenizer()
    from imagebind.models.multimodal_preprocessors import basic_clean, whitespace_clean  # after the alias

    keep = CONTEXT_LENGTH - 2  # ids between <start> and <end>
    ids: list[int] = []
    # SimpleTokenizer.encode, word by word, stopping once `keep` ids are known
    for match in tokenizer.pat.finditer(whitespace_clean(basic_clean(text)).lower()):
        word = match.group()
        if len(word) > limits.text_max_word_chars:
            raise InputError(
                f"{name}: a word of {len(word)} characters ({word[:20]}...) is over the limit of "
                f"{limits.text_max_word_chars}; is this text?"
            )
        check(cancel)
        word = "".join(tokenizer.byte_encoder[b] for b in word.encode("utf-8"))
        ids += [tokenizer.encoder[piece] for piece in tokenizer.bpe(word).split(" ")]
        if len(ids) >= keep:
            break
    tokens = [tokenizer.encoder["<|startoftext|>"], *ids[:keep], tokenizer.encoder["<|endoftext|>"]]
    result = torch.zeros(CONTEXT_LENGTH, dtype=torch.long)
    result[: len(tokens)] = torch.tensor(tokens)
    return result  # [77]


def load_text(source: Source, limits: InputLimits, cancel: CancelToken | None = None) -> torch.Tensor:
    """UTF-8 .txt file -> int64 [77]."""
    path = check_file(source, "text", limits.text_max_bytes)
    name = describe(source)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: drop a BOM written by Windows editors
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not UTF-8 text ({exc})") from None
    if not text.strip():
        raise InputError(f"{name}: text file holds only whitespace")
    return tokenize_text(text, limits, name, cancel)
