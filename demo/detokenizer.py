"""Token ids -> streamed text deltas of one answer (minimal version; see below).

SentencePiece cannot decode one token at a time (a piece's leading space depends on its
neighbours, and byte-fallback pieces only form characters together), so each push decodes the
whole answer so far and emits only the new suffix. Text that might still change is held back:
a trailing run of byte-fallback and special tokens (byte pieces are decoded together, so a later
byte can turn earlier ones into U+FFFD, and skipped special tokens such as <unk> let two byte
runs merge), trailing whitespace (the answer is stripped, as in the release), and a tail that
could be the start of a stop string.

This is the decoding logic that lived in `generation.stream_tokens`, moved behind the
`Detokenizer` API (push / stopped / finish / text) so the decode loops hold no text handling;
the incremental version of issue 14 item 4 replaces this module with the same API.
"""

from __future__ import annotations

import re


class Detokenizer:
    """Feed token ids with `push`; read text deltas. Deltas concatenate exactly to `text`."""

    def __init__(self, tokenizer, stop_strings: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.token_ids: list[int] = []
        self._unsettled = unsettled_token_ids(tokenizer)
        self._emitted = ""
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """A stop string appeared: the answer ends before it; push no more tokens."""
        return self._stopped

    @property
    def text(self) -> str:
        """The text emitted so far (the whole answer once `finish` has run)."""
        return self._emitted

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that became certain (may be "")."""
        self.token_ids.append(int(token_id))
        text, stopped = _answer_so_far(self.tokenizer, self.token_ids, self.stop_strings)
        if stopped:
            self._stopped = True
            return ""
        settled = len(self.token_ids)
        while settled and self.token_ids[settled - 1] in self._unsettled:
            settled -= 1
        if settled < len(self.token_ids):  # decode only up to the trailing unsettled run
            text = _answer_so_far(self.tokenizer, self.token_ids[:settled], self.stop_strings)[0]
        stable = text[: len(text) - _held_back(text, self.stop_strings)].rstrip()
        return self._emit(stable)

    def finish(self) -> str:
        """No more tokens: return the rest of the answer (held-back text included)."""
        final = _answer_so_far(self.tokenizer, self.token_ids, self.stop_strings)[0].rstrip()
        return self._emit(final)

    def _emit(self, stable: str) -> str:
        if stable.startswith(self._emitted) and len(stable) > len(self._emitted):
            delta = stable[len(self._emitted):]
            self._emitted = stable
            return delta
        return ""


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could still become a stop string."""
    for k in range(min(len(text), max((len(s) for s in stops), default=0)), 0, -1):
        if any(s.startswith(text[-k:]) for s in stops):
            return k
    return 0


def unsettled_token_ids(tokenizer) -> frozenset[int]:
    """Ids whose decoded text can still change with the next token: SentencePiece byte-fallback
    pieces ("<0x41>") and special tokens (skipped when decoding). Computed once per tokenizer."""
    cached = getattr(tokenizer, "_unsettled_token_ids", None)
    if cached is None:
        pattern = re.compile(r"<0x[0-9A-Fa-f]{2}>")
        vocab = tokenizer.get_vocab()
        cached = frozenset(i for piece, i in vocab.items() if pattern.fullmatch(piece)) | set(tokenizer.all_special_ids)
        tokenizer._unsettled_token_ids = cached
    return cached


def _answer_so_far(tokenizer, token_ids: list[int], stop_strings: tuple[str, ...]) -> tuple[str, bool]:
    """Decoded answer without leading space, cut before the first stop string; and whether cut."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True).lstrip()
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
