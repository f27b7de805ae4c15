"""Token-by-token sampling as an iterator of text deltas.

Text comes from `detokenizer.Detokenizer`: SentencePiece's decode of the answer's ids (as the
original decodes it), built one token at a time at constant cost, holding back what could still
change (an incomplete UTF-8 character of a byte-fallback run, trailing whitespace, a tail that could
become a stop string).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from .config import GenerationConfig
from .detokenizer import Detokenizer


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
    detokenizer = Detokenizer(tokenizer, stop_strings)
    cache = DynamicCache()
    inputs = torch.tensor([prompt_ids], device=device)  # (1, T)
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
        if delta := detokenizer.push(token):
            yield delta
        if detokenizer.stopped:
            state.finish_reason = "stop_string"
            break
    if delta := detokenizer.finish():
        yield delta
    state.text = detokenizer.text
