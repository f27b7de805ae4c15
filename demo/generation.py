"""Token-by-token sampling as an iterator of text deltas.

SentencePiece cannot decode one token at a time (a piece's leading space depends on its
neighbours, and byte-fallback pieces only form characters together), so each step decodes the
whole answer so far and emits only the new suffix. Text that might still change is held back:
a trailing run of byte-fallback and special tokens (byte pieces are decoded together, so a later
byte can turn earlier ones into U+FFFD, and skipped special tokens such as <unk> let two byte
runs merge), trailing whitespace (the answer is stripped, as in the release), and a tail that
could be the start of a stop string.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from .config import GenerationConfig


@dataclass
class GenerationState:
    """Filled in while streaming; readable once the iterator is exhausted."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""  # "eos", "stop_string", "length"


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """(V,) logits -> one token id. Nucleus sampling as in the release; greedy at temperature 0."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (V,)
    sorted_probs, order = torch.sort(probs, descending=True)
    # Drop tokens once the mass BEFORE them already exceeds top_p (the top token always stays).
    outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[choice])


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could still become a stop string."""
    for k in range(min(len(text), max((len(s) for s in stops), default=0)), 0, -1):
        if any(s.startswith(text[-k:]) for s in stops):
            return k
    return 0


@torch.inference_mode()
def stream_tokens(
    llm,
    tokenizer,
    prompt_ids: list[int],
    config: GenerationConfig,
    state: GenerationState,
    stop_strings: tuple[str, ...] = (),
    condition: Callable[[], AbstractContextManager] = nullcontext,
) -> Iterator[str]:
    """Yield text deltas of the answer to `prompt_ids`; `state` ends with the full answer.

    `condition()` is entered around every forward pass (e.g. the injection of this request's
    terms). Entering it per step rather than once keeps the stream correct when a server resumes
    the generator on another thread between tokens, as Gradio's worker pool does.
    """
    from transformers import DynamicCache

    device = llm.model.embed_tokens.weight.device
    generator = None
    if config.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(config.seed if config.seed is not None else int(torch.seed() % 2**63))
    eos = tokenizer.eos_token_id
    unsettled = unsettled_token_ids(tokenizer)
    cache = DynamicCache()
    inputs = torch.tensor([prompt_ids], device=device)  # (1, T)
    emitted = ""
    state.finish_reason = "length"
    for _ in range(int(config.max_new_tokens)):
        with condition():
            logits = llm(input_ids=inputs, past_key_values=cache, use_cache=True).logits[0, -1]  # (V,)
        token = sample_next(logits, config.temperature, config.top_p, generator)
        if token == eos:
            state.finish_reason = "eos"
            break
        state.token_ids.append(token)
        inputs = torch.tensor([[token]], device=device)  # (1, 1): the cache holds the rest
        text, stopped = _answer_so_far(tokenizer, state.token_ids, stop_strings)
        if stopped:
            state.finish_reason = "stop_string"
            break
        settled = len(state.token_ids)
        while settled and state.token_ids[settled - 1] in unsettled:
            settled -= 1
        if settled < len(state.token_ids):  # decode only up to the trailing unsettled run
            text = _answer_so_far(tokenizer, state.token_ids[:settled], stop_strings)[0]
        stable = text[: len(text) - _held_back(text, stop_strings)].rstrip()
        if stable.startswith(emitted) and len(stable) > len(emitted):
            yield stable[len(emitted):]
            emitted = stable
    final = _answer_so_far(tokenizer, state.token_ids, stop_strings)[0].rstrip()
    if final.startswith(emitted) and len(final) > len(emitted):
        yield final[len(emitted):]
        emitted = final
    state.text = emitted


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
