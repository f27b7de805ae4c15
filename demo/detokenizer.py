"""Incremental detokenization, exactly equal to SentencePiece's `decode`, at constant cost per token.

The original decodes the answer with SentencePiece (`sp_model.decode(ids)`), then the demo strips
it. Hugging Face's decoder differs in two corners: byte-fallback runs that are not valid UTF-8
(it replaces every byte of the run with U+FFFD; SentencePiece only the invalid bytes, so a Chinese
answer cut mid-character ends in one or two U+FFFD after the good characters) and `<unk>`
(SentencePiece writes " ⁇ ", Hugging Face skips it). Re-decoding the whole answer at every token
is also quadratic in the answer length.

So this module applies SentencePiece's decoding rules (sentencepiece_processor.cc,
`SentencePieceProcessor::Decode`) one piece at a time:

  * a normal piece's surface is the piece with "▁" read as a space; while nothing has been written
    yet, one leading "▁" is consumed (the dummy prefix; with `remove_extra_whitespaces` every
    leading piece loses it until some text appears);
  * control pieces (<s>, </s>) write nothing; the unknown piece writes the model's unk surface;
  * consecutive byte pieces are gathered and read one UTF-8 character at a time; a byte that does
    not start a valid character becomes one U+FFFD. UTF-8 is prefix-free, so a character is final
    as soon as its bytes are all there (or as soon as they cannot form one): only an incomplete
    trailing character (at most 3 bytes) is ever held back, and a non-byte piece or `finish()`
    settles it.

The decoding rules read the vocabulary once (piece text and type per id, cached on the
tokenizer); each token then costs O(1), independent of the answer length (benchmarks/
bench_detokenizer.py). Tests check the stream against `SentencePieceProcessor.decode` on random ids.

`tokenizer` may be a `sentencepiece.SentencePieceProcessor` (its normaliser flags and unk surface
are read from the model) or the transformers tokenizer a converted folder carries. For the latter
the SentencePiece model that conversion keeps beside it (llm/tokenizer.model) is used when present;
otherwise the table is read from the tokenizer's vocabulary with LLaMA's flags (dummy prefix on,
extra whitespace kept, unk surface " ⁇ "; byte pieces are the "<0xNN>" pieces, the special tokens
other than unk are control pieces), which is exact for LLaMA-style models (tests check both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import WeightsError

SPACE = "\u2581"  # SentencePiece's whitespace symbol "▁"
REPLACEMENT = "\ufffd"
DEFAULT_UNK_SURFACE = " \u2047 "  # " ⁇ ", SentencePiece's kDefaultUnknownSymbol
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")

# Piece kinds (one table row per id).
NORMAL, BYTE, CONTROL, UNKNOWN = 0, 1, 2, 3


@dataclass(frozen=True)
class DecodeTable:
    """What SentencePiece's decoder needs to know about each id, computed once per tokenizer."""

    kinds: tuple[int, ...]  # NORMAL / BYTE / CONTROL / UNKNOWN
    surfaces: tuple[str, ...]  # NORMAL: piece with "▁" -> " "; UNKNOWN: unk surface; else ""
    bytes_: tuple[int, ...]  # BYTE: the byte value; else -1
    starts_with_space: tuple[bool, ...]  # NORMAL piece beginning with "▁" (the dummy prefix)
    strip_bos_space: bool  # add_dummy_prefix or remove_extra_whitespaces
    remove_extra_whitespaces: bool

    @classmethod
    def from_pieces(
        cls, pieces: list[str], kinds: list[int], unk_surface: str, add_dummy_prefix: bool, remove_extra_whitespaces: bool
    ) -> "DecodeTable":
        surfaces, values = [], []
        for piece, kind in zip(pieces, kinds):
            match = BYTE_PIECE.fullmatch(piece) if kind == BYTE else None
            values.append(int(match.group(1), 16) if match else -1)
            surfaces.append(piece.replace(SPACE, " ") if kind == NORMAL else unk_surface if kind == UNKNOWN else "")
        return cls(
            kinds=tuple(kinds),
            surfaces=tuple(surfaces),
            bytes_=tuple(values),
            starts_with_space=tuple(kind == NORMAL and piece.startswith(SPACE) for piece, kind in zip(pieces, kinds)),
            strip_bos_space=add_dummy_prefix or remove_extra_whitespaces,
            remove_extra_whitespaces=remove_extra_whitespaces,
        )


def decode_table(tokenizer) -> DecodeTable:
    """The decode table of a SentencePiece processor or a transformers tokenizer (cached on it)."""
    cached = getattr(tokenizer, "_sentencepiece_decode_table", None)
    if cached is not None:
        return cached
    try:
        import sentencepiece as spm
    except ImportError:  # pragma: no cover - sentencepiece is in requirements.txt
        spm = None
    if spm is not None and isinstance(tokenizer, spm.SentencePieceProcessor):
        table = _table_from_sentencepiece(tokenizer)
    elif hasattr(tokenizer, "convert_ids_to_tokens"):
        beside = _sentencepiece_beside(tokenizer)
        sp = spm.SentencePieceProcessor(model_file=str(beside)) if beside else None
        if sp is not None and sp.get_piece_size() == len(tokenizer.get_vocab()):  # get_vocab: also through proxies
            table = _table_from_sentencepiece(sp)
        else:  # no tokenizer.model beside it (or not this vocabulary's): the vocabulary, LLaMA's rules
            table = _table_from_transformers(tokenizer)
    else:
        raise TypeError(f"expected a sentencepiece.SentencePieceProcessor or a transformers tokenizer, got {type(tokenizer).__name__}")
    try:
        tokenizer._sentencepiece_decode_table = table
    except AttributeError:  # SWIG objects may refuse new attributes: rebuild per Detokenizer
        pass
    return table


def _sentencepiece_beside(tokenizer):
    """The tokenizer.model a converted folder keeps beside the Hugging Face tokenizer, if any."""
    from pathlib import Path

    name = getattr(tokenizer, "name_or_path", "") or ""
    path = Path(name) / "tokenizer.model" if name else None
    return path if path is not None and path.is_file() else None


def _table_from_sentencepiece(sp) -> DecodeTable:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    if proto.denormalizer_spec.precompiled_charsmap:
        # SentencePiece applies denormalisation rules to the whole decoded text; they are not
        # local to a piece, so they cannot be applied incrementally. No LLaMA model has them.
        raise WeightsError(
            "this SentencePiece model has denormalisation rules, which incremental decoding does not support; "
            "the release uses LLaMA's tokenizer.model, which has none"
        )
    kinds = []
    for i in range(sp.get_piece_size()):
        kinds.append(BYTE if sp.is_byte(i) else CONTROL if sp.is_control(i) else UNKNOWN if sp.is_unknown(i) else NORMAL)
    unk_surface = proto.trainer_spec.unk_surface if proto.trainer_spec.HasField("unk_surface") else DEFAULT_UNK_SURFACE
    spec = proto.normalizer_spec
    return DecodeTable.from_pieces(
        [sp.id_to_piece(i) for i in range(sp.get_piece_size())], kinds, unk_surface, spec.add_dummy_prefix, spec.remove_extra_whitespaces
    )


def _table_from_transformers(tokenizer) -> DecodeTable:
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    unk = tokenizer.unk_token_id
    kinds = []
    for i, piece in enumerate(pieces):
        if i == unk:
            kinds.append(UNKNOWN)
        elif i in special:
            kinds.append(CONTROL)
        elif BYTE_PIECE.fullmatch(piece or ""):
            kinds.append(BYTE)
        else:
            kinds.append(NORMAL)
    # LLaMA's tokenizer.model: add_dummy_prefix on, remove_extra_whitespaces off (conversion checks it).
    return DecodeTable.from_pieces([p or "" for p in pieces], kinds, DEFAULT_UNK_SURFACE, True, False)


def _utf8_length(lead: int) -> int:
    """Bytes a UTF-8 character starting with `lead` needs (0: not a lead byte), as SentencePiece reads it."""
    if lead < 0x80:
        return 1
    if lead & 0xE0 == 0xC0:
        return 2
    if lead & 0xF0 == 0xE0:
        return 3
    if lead & 0xF8 == 0xF0:
        return 4
    return 0


def decode_bytes(run: bytearray, final: bool) -> tuple[str, int]:
    """Decode the start of a byte-fallback run as SentencePiece does: (text, bytes consumed).

    One valid character at a time; a byte that does not start a valid character becomes one
    U+FFFD. Unless `final` (the run has ended), stop before a character whose bytes are not all
    there yet, since the next byte could complete it. Python's strict UTF-8 validity (no overlong
    forms, no surrogates, <= U+10FFFF) is SentencePiece's (IsValidDecodeUTF8).
    """
    out: list[str] = []
    i = 0
    while i < len(run):
        need = _utf8_length(run[i])
        if need and i + need > len(run) and not final:
            break  # an incomplete character: wait for its next byte
        if need and i + need <= len(run):
            try:
                out.append(bytes(run[i : i + need]).decode("utf-8"))
                i += need
                continue
            except UnicodeDecodeError:
                pass
        out.append(REPLACEMENT)
        i += 1
    return "".join(out), i


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could still become a stop string."""
    for k in range(min(len(text), max((len(s) for s in stops), default=0)), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stops):
            return k
    return 0


class Detokenizer:
    """Incremental text of one answer's token ids, exactly equal to SentencePiece's decode.

    The final answer is SentencePiece's decode of the pushed ids with leading whitespace removed,
    cut before the first stop string, and with trailing whitespace removed (the release strips
    its answer). `push` returns only text that can no longer change: trailing whitespace, a tail
    that could still become a stop string, and an incomplete UTF-8 character are held back until
    the next tokens or `finish()` settle them. The deltas concatenate exactly to the final answer.
    """

    def __init__(self, tokenizer, stop_strings: tuple[str, ...] = ()) -> None:
        self._table = decode_table(tokenizer)
        self._stops = tuple(s for s in stop_strings if s)
        self._max_stop = max((len(s) for s in self._stops), default=0)
        self._bytes = bytearray()  # the current byte-fallback run, not yet decoded
        self._raw_empty = True  # nothing decoded yet (SentencePiece's text->empty())
        self._is_bos_ws = True  # the next normal piece may lose its leading "▁"
        self._bos_ws_seen = False
        self._started = False  # some non-whitespace text has been seen (the answer is lstripped)
        self._unsent = ""  # settled text not emitted yet: trailing whitespace / stop-string prefix
        self._parts: list[str] = []
        self._stopped = False
        self._finished = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def text(self) -> str:
        if len(self._parts) > 1:  # join once, keep one part: O(1) amortised per token
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def push(self, token_id: int) -> str:
        if self._stopped or self._finished:
            return ""
        table = self._table
        kind = table.kinds[token_id] if 0 <= token_id < len(table.kinds) else CONTROL  # out of vocabulary: nothing
        if kind == BYTE:
            self._bytes.append(table.bytes_[token_id])
            text, used = decode_bytes(self._bytes, final=False)
            del self._bytes[:used]
            return self._settle(text)
        settled = self._flush_bytes()
        if self._bos_ws_seen or not self._raw_empty:
            self._is_bos_ws = False
        surface = table.surfaces[token_id]
        self._bos_ws_seen = False
        if kind == NORMAL and self._is_bos_ws and table.strip_bos_space and table.starts_with_space[token_id]:
            surface = surface[1:]
            self._bos_ws_seen = not table.remove_extra_whitespaces
        return settled + self._settle(surface)

    def finish(self) -> str:
        """Settle everything held back; the returned delta completes `text` (the final answer)."""
        if self._finished:
            return ""
        delta = self._flush_bytes()
        self._finished = True
        if not self._stopped:
            tail = self._unsent.rstrip()
            self._unsent = ""
            if tail:
                self._parts.append(tail)
            delta += tail
        return delta

    # -- internals --------------------------------------------------------------------------

    def _flush_bytes(self) -> str:
        """The byte run has ended: decode what is left of it (incomplete characters -> U+FFFD)."""
        if not self._bytes:
            return ""
        text, _ = decode_bytes(self._bytes, final=True)
        self._bytes.clear()
        return self._settle(text)

    def _settle(self, chunk: str) -> str:
        """Add decoded text that can no longer change; return what may be shown of it now."""
        if not chunk or self._stopped:
            return ""
        self._raw_empty = False
        if not self._started:
            chunk = chunk.lstrip()
            if not chunk:
                return ""
            self._started = True
        # Emitted text never ends inside a possible stop string (held back below), so a stop string
        # can only start within the unsent tail: searching it keeps the cost per token bounded.
        start = len(self._unsent) - self._max_stop + 1
        unsent = self._unsent + chunk
        cut = min((i for i in (unsent.find(s, max(0, start)) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._stopped = True
            delta = unsent[:cut].rstrip()
            self._unsent = ""
        else:
            ready = unsent[: len(unsent) - held_back(unsent, self._stops)].rstrip()
            delta = ready
            self._unsent = unsent[len(ready):]
        if delta:
            self._parts.append(delta)
        return delta
