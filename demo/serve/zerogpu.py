"""Hugging Face ZeroGPU: the pipeline's GPU work inside `@spaces.GPU` calls.

On a ZeroGPU Space (hardware "ZeroGPU"; the Space sets SPACES_ZERO_GPU=true) a GPU is attached
only while a function decorated with `@spaces.GPU` runs. The `spaces` package runs each call in a
forked worker process (arguments and results cross by pickle, generators item by item) and gives
the GPU back when the call returns. Hosts load `pipeline_class()`: on such a Space a
`ZeroGPUPipeline`, whose GPU work happens inside such calls:

  * `encode` and `embed`: one decorated call each, returning CPU tensors;
  * `stream`: the decoding is a decorated generator in which the engine steps in the call's own
    thread (`Engine(background=False)`): an engine thread started in the server process does not
    exist in the forked worker, and one started in the worker would outlive the call that holds
    the GPU. Requests therefore decode one per call, not batched (each call is its own process);
  * cancel: a `CancelToken` is thread state and cannot cross; the caller checks it between deltas
    and closes the generator, which `spaces` forwards to the worker (it stops at its next delta,
    and the row is freed there);
  * the library's errors (`demo.errors`, whose messages say what to do) are sent back as values
    and raised again here: `spaces` would turn an exception into a bare "ZeroGPU worker error".

Everywhere else `pipeline_class()` is the ordinary pipeline (engine thread, batching), and
`spaces.GPU` itself returns the function unchanged. `spaces` must be imported before anything
touches CUDA (it patches torch so weights "moved to cuda" at start-up wait in CPU memory, in the
thread that imported it): `ZeroGPUPipeline.from_pretrained` imports it first thing. Image output (`imagine`) is not wired: its
progress callback cannot cross to the worker. README "Hugging Face Spaces" has the settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..cancel import CancelToken, check
from ..engine import Engine, Request
from ..errors import Cancelled, DemoError
from ..generation import GenerationState
from ..pipeline import Conditioning, ImageBindLLMPipeline, InputItem

ZERO_GPU_VARIABLE = "SPACES_ZERO_GPU"  # set by Hugging Face on ZeroGPU hardware


def on_zerogpu() -> bool:
    """True on a ZeroGPU Space: SPACES_ZERO_GPU read as the `spaces` package reads it."""
    return os.environ.get(ZERO_GPU_VARIABLE, "").lower() in ("1", "t", "true")


def pipeline_class() -> type[ImageBindLLMPipeline]:
    """The pipeline class a host loads (`pipeline_class().from_pretrained(...)`): ZeroGPUPipeline
    on a ZeroGPU Space, the ordinary one elsewhere."""
    return ZeroGPUPipeline if on_zerogpu() else ImageBindLLMPipeline


def detect() -> bool:
    """`on_zerogpu()`, importing `spaces` when it is true (it must patch torch before CUDA is
    touched). Off ZeroGPU nothing is imported."""
    if not on_zerogpu():
        return False
    try:
        import spaces  # noqa: F401  (patches torch on import)
    except ImportError:
        raise RuntimeError(
            f"{ZERO_GPU_VARIABLE} is set (a ZeroGPU Space) but the `spaces` package is missing: add `spaces` to "
            "requirements.txt (Hugging Face installs it on ZeroGPU hardware), or unset the variable off Spaces"
        ) from None
    return True


def spaces_gpu() -> Callable:
    """`spaces.GPU` (a no-op off ZeroGPU); without the package, a decorator that changes nothing."""
    try:
        import spaces
    except ImportError:
        return lambda function, duration=None: function
    return spaces.GPU


@dataclass(frozen=True)
class GPUDurations:
    """Seconds asked of ZeroGPU per call (`@spaces.GPU(duration=...)`): the longest a call may run
    before ZeroGPU aborts it. Only the time used counts against the visitor's quota, but shorter
    asks are scheduled first, so ask for what the call needs. The first call of a fresh worker
    also moves the weights to the GPU (a few seconds for 7B in fp16)."""

    encode: float = 60.0  # every input's ImageBind tower, a video's 15 views included
    decode_base: float = 20.0  # weights to the GPU, prefill
    decode_per_token: float = 0.15  # measured 7B on an H200: fp16 eager 0.02-0.025 s, bitsandbytes 8-bit 0.08-0.14 s

    def decode(self, request: Request) -> float:
        """The decoding call's duration, from the request's token limit (spaces calls it with the
        decorated function's arguments)."""
        return self.decode_base + self.decode_per_token * int(request.generation.max_new_tokens)


@dataclass
class _Failed:
    """A library error raised in the worker, sent back as a value (see the module docstring)."""

    error: DemoError


class ZeroGPUPipeline(ImageBindLLMPipeline):
    """The pipeline whose `encode`, `embed` and `stream` run their GPU work in `@spaces.GPU`
    calls, the engine stepping in the call's thread. `gpu`: the decorator (default `spaces.GPU`)."""

    engine_in_background = False  # each request's decoding runs in its @spaces.GPU call's thread

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "ZeroGPUPipeline":
        detect()  # imports `spaces` before anything touches CUDA
        return super().from_pretrained(*args, **kwargs)

    def __init__(self, model, encoder, cache=None, *, engine: Engine | None = None, durations: GPUDurations = GPUDurations(),
                 gpu: Callable | None = None, **kwargs):
        engine = engine if engine is not None else Engine(model.llm, model.tokenizer, background=False)
        if engine.background:
            raise ValueError("ZeroGPUPipeline needs an Engine(background=False): an engine thread cannot use the call's GPU")
        super().__init__(model, encoder, cache, engine=engine, **kwargs)
        gpu = gpu if gpu is not None else spaces_gpu()
        self.durations = durations
        # Decorated at construction, before the app launches: ZeroGPU registers them at start-up.
        # spaces calls a callable duration with the call's arguments: `self.durations` may change later.
        self._encode_on_gpu = gpu(self._encode_in_call, duration=lambda *args: self.durations.encode)
        self._embed_on_gpu = gpu(self._embed_in_call, duration=lambda *args: self.durations.encode)
        self._decode_on_gpu = gpu(self._decode_in_call, duration=lambda request: self.durations.decode(request))

    # --- called in the server process ---
    def encode(self, inputs: Sequence[InputItem] = (), cache=None, *, cancel: CancelToken | None = None) -> Conditioning:
        check(cancel)
        return _raise_failed(self._encode_on_gpu(list(inputs), cache), cancel)

    def embed(self, item: InputItem, *, cancel: CancelToken | None = None):
        check(cancel)
        return _raise_failed(self._embed_on_gpu(item), cancel)

    def _decode(self, request: Request, state: GenerationState | None) -> Iterator[str]:
        cancel = request.cancel
        state = state if state is not None else GenerationState()
        terms = None if request.terms is None else request.terms.cpu()
        items = self._decode_on_gpu(replace(request, terms=terms, cancel=None))
        try:
            for kind, value in items:
                if cancel is not None and cancel.cancelled:
                    state.finish_reason = "cancelled"
                    raise Cancelled("the request was cancelled")
                if kind == "delta":
                    yield value
                elif kind == "end":
                    state.token_ids[:], state.text, state.finish_reason = value.token_ids, value.text, value.finish_reason
                else:
                    raise value.error
        finally:
            items.close()  # stops the worker's generator (spaces: at its next delta); it frees the row

    # --- called in the @spaces.GPU worker (the GPU is attached) ---
    def _encode_in_call(self, inputs: list[InputItem], cache) -> Conditioning | _Failed:
        try:
            conditioning = super().encode(inputs, cache)
        except DemoError as exc:
            return _Failed(exc)
        return replace(conditioning, terms=conditioning.terms.cpu())  # (1, L, D): no CUDA tensor crosses back

    def _embed_in_call(self, item: InputItem) -> Any:
        try:
            return super().embed(item)  # (E,) float32, CPU
        except DemoError as exc:
            return _Failed(exc)

    def _decode_in_call(self, request: Request) -> Iterator[tuple[str, Any]]:
        """("delta", text)..., then ("end", GenerationState) or ("failed", _Failed)."""
        state = GenerationState()
        try:
            for delta in super()._decode(request, state):
                yield "delta", delta
        except DemoError as exc:
            yield "failed", _Failed(exc)
            return
        yield "end", state


def _raise_failed(result, cancel: CancelToken | None):
    if isinstance(result, _Failed):
        raise result.error
    check(cancel)
    return result
