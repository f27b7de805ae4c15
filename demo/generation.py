"""Sampling, and the single-request decode loop (the reference the batched engine must match).

Text comes from `detokenizer.Detokenizer`: SentencePiece's decode of the answer's ids (as the
original decodes it), built one token at a time at constant cost, holding back what could still
change. This module only produces token ids; the engine (`demo/engine.py`) runs many requests
together with the same `sample_next` and `Detokenizer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .config import GenerationConfig
from .detokenizer import Detokenizer
from .injection import TERMS_KWARG


@dataclass
class GenerationState:
    """Filled in while streaming; readable once the iterator is exhausted."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = ""  # "eos", "stop_string", "length"; the engine adds "cancelled"


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """(V,) logits -> one token id. Nucleus sampling as in the release; greedy at temperature 0."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    # Shift by the max first: a tiny temperature (1e-45) then sends the others to -inf, not NaN.
    logits = logits.float()
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)  # (V,)
    sorted_probs, order = torch.sort(probs, descending=True)
    # Drop tokens once the mass BEFORE them already exceeds top_p (the top token always stays).
    outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[choice])


@torch.inference_mode()
def stream_tokens(
    llm,
    tokenizer,
    prompt_ids: list[int],
    config: GenerationConfig,
    state: GenerationState,
    stop_strings: tuple[str, ...] = (),
    terms: torch.Tensor | None = None,
) -> Iterator[str]:
    """Yield text deltas of the answer to `prompt_ids`, one request alone; `state` ends with the
    full answer. `terms` (1, L, D): this request's injection (None: the plain LLaMA)."""
    from transformers import DynamicCache

    device = llm.model.embed_tokens.weight.device
    generator = request_generator(config, device)
    eos = tokenizer.eos_token_id
    text = Detokenizer(tokenizer, stop_strings)
    cache = DynamicCache()
    inputs = torch.tensor([prompt_ids], device=device)  # (1, T)
    state.finish_reason = "length"
    for _ in range(int(config.max_new_tokens)):
        # logits_to_keep=1: the prefill computes the output layer for the last position only.
        logits = llm(input_ids=inputs, past_key_values=cache, use_cache=True, logits_to_keep=1, **{TERMS_KWARG: terms}).logits[0, -1]  # (V,)
        token = sample_next(logits, config.temperature, config.top_p, generator)
        if token == eos:
            state.finish_reason = "eos"
            break
        state.token_ids.append(token)
        inputs = torch.tensor([[token]], device=device)  # (1, 1): the cache holds the rest
        if delta := text.push(token):  # on a stop string: the text before it
            yield delta
        if text.stopped:
            state.finish_reason = "stop_string"
            break
    if delta := text.finish():
        yield delta
    state.text = text.text


def request_generator(config: GenerationConfig, device: torch.device) -> torch.Generator | None:
    """The request's own random stream (None for greedy): the same seed gives the same answer
    whatever else runs beside it."""
    if config.temperature <= 0:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed if config.seed is not None else int(torch.seed() % 2**63))
    return generator
