"""The generation engine: requests decoded together in one batch (continuous batching).

    engine = Engine(model.llm, model.tokenizer, max_batch=8)           # compile=True: fast path
    stream = engine.submit(Request(prompt_ids, terms, GenerationConfig(seed=1), STOP_STRINGS))
    for delta in stream:                                              # from any thread
        print(delta, end="")
    stream.state.finish_reason                                        # "eos", "stop_string", "length", "cancelled"

One background thread owns the model. Between two decoding steps it admits waiting requests
(each prefilled alone, its first token sampled from the prefill), drops cancelled and finished
rows, and then runs ONE forward pass for all running rows, each row with its own conditioning
terms (`injection_terms`, (B, L, D)), its own sampling settings and its own `torch.Generator`,
so a row's tokens are those it would get alone with the same seed.

Rows of different lengths share one KV cache, right-aligned: every row's newest token is in the
same cache column, earlier columns that a row does not use are masked out (a 2D attention mask),
and each row's rotary positions count its own tokens (`position_ids`). A joining row is copied in
to end at the current column (the others are shifted right when its prompt is longer); leading
columns no row uses any more are dropped. Two cache layouts follow this scheme:

  * eager (default): transformers' DynamicCache, as wide as the longest row, rows = requests;
  * compile=True: a StaticCache of fixed shape (max_batch rows x context columns) and a
    torch.compile'd decoding step (CUDA graphs on a GPU); idle rows are computed and ignored, so
    no shape ever changes and nothing recompiles when requests come and go. One device only (the
    cache is allocated on the embedding's device; a model split by device_map="auto" runs eager).

Text goes through `demo.detokenizer.Detokenizer` per request. Cancel (`stream.cancel()` or the
request's CancelToken) frees the row at the next step; the stream then raises `Cancelled`.

background=False (caller-thread mode): no engine thread; a consumer waiting on its stream runs
the steps itself, in its own thread (one thread steps at a time, for every running row). For hosts
where only the calling thread's function holds the GPU: a Hugging Face ZeroGPU Space runs each
`@spaces.GPU` call in a forked worker process and releases the GPU when the call returns, so the
work must start and end inside the call (demo/serve/zerogpu.py). Same tokens as the thread mode.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .cancel import CancelToken
from .config import GenerationConfig
from .detokenizer import Detokenizer
from .errors import BusyError, Cancelled
from .generation import GenerationState, request_generator, sample_next
from .injection import TERMS_KWARG

logger = logging.getLogger(__name__)

_END = object()  # end of a stream


@dataclass
class Request:
    """One generation: prompt token ids (BOS first), conditioning terms (1, L, D) or None for the
    plain LLaMA, sampling settings (max_new_tokens, temperature, top_p, seed), stop strings."""

    prompt_ids: list[int]
    terms: torch.Tensor | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    stop_strings: tuple[str, ...] = ()
    cancel: CancelToken | None = None


class RequestStream(Iterator[str]):
    """The text deltas of one request, in order; iterate from any one thread."""

    def __init__(self, request: Request, state: GenerationState | None = None, engine: "Engine | None" = None):
        self.request = request
        self._engine = engine  # caller-thread mode: the engine this stream's consumer steps; else None
        self._abandoned = CancelToken()  # the consumer's own stop; the request's token stays untouched
        self.state = state if state is not None else GenerationState()  # complete once the iterator is exhausted
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self._done = False

    def cancel(self) -> None:
        """Stop generating; the engine frees the row before its next step (caller-thread mode:
        now, since no step may follow)."""
        self._abandoned.cancel()
        if self._engine is not None and not self._done:
            self._engine._drop_now()

    @property
    def cancelled(self) -> bool:
        token = self.request.cancel
        return self._abandoned.cancelled or (token is not None and token.cancelled)

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        if self._engine is not None:
            self._engine._step_until_ready(self)
        item = self._items.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    # --- called by the engine thread ---
    def _put(self, delta: str) -> None:
        if delta:
            self._items.put(delta)

    def _end(self, error: BaseException | None = None) -> None:
        self._items.put(_END if error is None else error)


class _Row:
    """A running request: its stream, sampler, text and position."""

    def __init__(self, stream: RequestStream, tokenizer, generator: torch.Generator | None, max_new_tokens: int):
        self.stream = stream
        self.generation = stream.request.generation
        self.generator = generator
        self.text = Detokenizer(tokenizer, stream.request.stop_strings)
        self.max_new_tokens = max_new_tokens
        self.length = len(stream.request.prompt_ids)  # tokens in the cache for this row
        self.pending = -1  # the sampled token to feed at the next step


class Engine:
    """Owns the LLM; decodes submitted requests together. Thread-safe `submit`."""

    def __init__(
        self, llm, tokenizer, *, max_batch: int = 8, compile: bool | str = False, max_length: int | None = None,
        max_waiting: int | None = None, background: bool = True,
    ):
        """max_batch: rows decoded together (the server's concurrency). max_waiting: requests
        queued beyond those (None: no limit); `submit` raises BusyError past it. compile: False (eager),
        True (torch.compile with inductor; CUDA graphs on a GPU) or a torch.compile backend name
        (e.g. "aot_eager": the same static path, quick to compile, for tests). max_length: cache
        columns (default: the model's context). background: False for caller-thread mode (module
        docstring): the streams' consumers run the steps."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.llm = llm
        self.tokenizer = tokenizer
        self.max_batch = int(max_batch)
        self.compile = compile
        self.max_length = int(max_length or llm.config.max_position_embeddings)  # cache columns
        self.max_waiting = max_waiting
        self.device = llm.model.embed_tokens.weight.device
        self.dtype = llm.model.embed_tokens.weight.dtype
        cfg = llm.config
        self._terms_shape = (cfg.num_hidden_layers, cfg.hidden_size)  # (L, D) per row
        self._waiting: list[RequestStream] = []
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.background = bool(background)
        self._stepping = threading.Lock()  # caller-thread mode: held by the thread running a step
        self._closed = False
        self._rows: list[_Row | None] = []  # index = cache row; None = idle slot (static layout)
        self._batch = _StaticBatch(self) if self.compile else _DynamicBatch(self)
        self.steps = 0  # decoding steps run (for tests and benchmarks)

    # ------------------------------------------------------------------------------------------
    # Public
    # ------------------------------------------------------------------------------------------
    def submit(self, request: Request, state: GenerationState | None = None) -> RequestStream:
        """Queue a request; returns its stream at once (generation starts between two steps).
        `state` (optional) is filled as `stream.state` is."""
        if not request.prompt_ids:
            raise ValueError("the prompt is empty: it needs at least the BOS token")
        if len(request.prompt_ids) >= self.max_length:
            raise ValueError(f"the prompt has {len(request.prompt_ids)} tokens; this engine holds at most {self.max_length - 1}")
        stream = RequestStream(request, state, None if self.background else self)
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self.max_waiting is not None and len(self._waiting) >= self.max_waiting:
                raise BusyError(f"the server is busy ({self.max_batch} requests running, {len(self._waiting)} waiting): retry in a moment")
            self._waiting.append(stream)
            if self._thread is None and self.background:
                self._thread = threading.Thread(target=self._run, name="imagebind-llm-engine", daemon=True)
                self._thread.start()
            self._wakeup.notify()
        return stream

    def close(self) -> None:
        """Stop the engine thread; running and waiting requests end with an error."""
        with self._lock:
            self._closed = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join()
        elif not self.background:
            with self._stepping, self._lock:
                waiting, self._waiting = self._waiting, []
            self._end_all(waiting)

    @property
    def running(self) -> int:
        return sum(row is not None for row in self._rows)

    # ------------------------------------------------------------------------------------------
    # The engine thread
    # ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._waiting and not self.running:
                    self._wakeup.wait()
                if self._closed:
                    waiting, self._waiting = self._waiting, []
                    break
                admitted = self._take_waiting()
            self._work(admitted)
        self._end_all(waiting)

    def _take_waiting(self) -> list[RequestStream]:
        """The waiting requests that fit in the free rows (call with `_lock` held)."""
        free = self.max_batch - self.running
        admitted, self._waiting = self._waiting[:free], self._waiting[free:]
        return admitted

    def _work(self, admitted: list[RequestStream]) -> None:
        """Admit, drop the cancelled, run one step: one turn of the engine, in whichever thread."""
        try:
            with torch.inference_mode():
                for stream in admitted:
                    self._admit(stream)
                self._drop_cancelled()
                if self.running:
                    self._step()
        except Exception as exc:  # a failed forward pass ends the running requests, not the engine
            logger.exception("decoding step failed")
            for row in self._rows:
                if row is not None:
                    row.stream._end(exc)
            self._rows = []
            self._batch.reset()

    def _end_all(self, waiting: list[RequestStream]) -> None:
        error = RuntimeError("the engine was closed before this request finished")
        for stream in waiting:
            stream._end(error)
        for row in self._rows:
            if row is not None:
                row.stream._end(error)
        self._rows = []

    # --- caller-thread mode (background=False) ---
    def _step_until_ready(self, stream: RequestStream) -> None:
        """Run engine turns in this thread until `stream` has an item. Another consumer may be
        stepping (for every row, this one's too): then wait for it briefly and look again."""
        while stream._items.empty():
            if not self._stepping.acquire(timeout=0.005):
                continue
            try:
                if not stream._items.empty():
                    return
                with self._lock:
                    if self._closed:
                        stream._end(RuntimeError("the engine was closed before this request finished"))
                        return
                    admitted = self._take_waiting()
                self._work(admitted)
            finally:
                self._stepping.release()

    def _drop_now(self) -> None:
        """Free the cancelled requests' rows (and queue places) at once: in caller-thread mode no
        later step may come to do it."""
        with self._stepping:
            with self._lock:
                cancelled = [s for s in self._waiting if s.cancelled]
                self._waiting = [s for s in self._waiting if not s.cancelled]
            for stream in cancelled:
                self._finish_cancelled(stream)
            with torch.inference_mode():
                self._drop_cancelled()

    def _admit(self, stream: RequestStream) -> None:
        """Prefill one request alone (logits for its last position only) and sample its first
        token; it joins the batch unless that token already ends it."""
        from transformers import DynamicCache

        if stream.cancelled:
            return self._finish_cancelled(stream)
        request = stream.request
        room = self.max_length - len(request.prompt_ids)
        row = _Row(stream, self.tokenizer, request_generator(request.generation, self.device), min(int(request.generation.max_new_tokens), room))
        if row.max_new_tokens < 1:
            return self._finish(row, "length")
        try:
            terms = None if request.terms is None else request.terms.to(self.device, self.dtype)  # (1, L, D)
            cache = DynamicCache()
            ids = torch.tensor([request.prompt_ids], device=self.device)  # (1, T)
            logits = self.llm(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1, **{TERMS_KWARG: terms}).logits[0, -1]
        except Exception as exc:
            stream._end(exc)
            return
        if self._accept(row, logits):
            self._rows = self._batch.join(self._rows, row, cache, terms)

    def _drop_cancelled(self) -> None:
        gone = [i for i, row in enumerate(self._rows) if row is not None and row.stream.cancelled]
        for i in gone:
            self._finish_cancelled(self._rows[i].stream)
        if gone:
            self._rows = self._batch.leave(self._rows, gone)

    def _step(self) -> None:
        """One forward pass for every running row; each row samples its next token."""
        logits = self._batch.forward(self._rows)  # (rows, V)
        self.steps += 1
        done = []
        for i, row in enumerate(self._rows):
            if row is None:
                continue
            row.length += 1
            if not self._accept(row, logits[i]):
                done.append(i)
        if done:
            self._rows = self._batch.leave(self._rows, done)

    def _accept(self, row: _Row, logits: torch.Tensor) -> bool:
        """Sample from (V,) logits; stream the text. False when the request has finished."""
        config = row.generation
        token = sample_next(logits, config.temperature, config.top_p, row.generator)
        if token == self.tokenizer.eos_token_id:
            return self._finish(row, "eos")
        row.stream.state.token_ids.append(token)
        row.stream._put(row.text.push(token))  # on a stop string: the text before it
        if row.text.stopped:
            return self._finish(row, "stop_string")
        if len(row.stream.state.token_ids) >= row.max_new_tokens:
            return self._finish(row, "length")
        row.pending = token
        return True

    def _finish(self, row: _Row, reason: str) -> bool:
        row.stream._put(row.text.finish())
        row.stream.state.text = row.text.text
        row.stream.state.finish_reason = reason
        row.stream._end()
        return False

    @staticmethod
    def _finish_cancelled(stream: RequestStream) -> None:
        stream.state.finish_reason = "cancelled"
        stream._end(Cancelled("the request was cancelled"))


# ----------------------------------------------------------------------------------------------
# KV cache layouts. Both keep every row's newest token in the same column; `rows[i]` is cache
# row i. join/leave return the new row list.
# ----------------------------------------------------------------------------------------------
class _DynamicBatch:
    """Eager: a DynamicCache with one row per running request, as wide as the longest row."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.reset()

    def reset(self) -> None:
        self.cache = None  # transformers DynamicCache: per layer keys/values (B, kv_heads, W, head_dim)
        self.mask: torch.Tensor | None = None  # (B, W) 1 where the row has a token
        self.row_terms: list[torch.Tensor | None] = []  # per row (1, L, D) or None
        self.terms: torch.Tensor | None = None  # (B, L, D); None when no row is conditioned

    def join(self, rows: list, row: _Row, cache, terms: torch.Tensor | None) -> list:
        n, device = row.length, self.engine.device
        if self.cache is None:
            self.cache, self.mask = cache, torch.ones(1, n, dtype=torch.long, device=device)
        else:
            width = max(self.mask.shape[1], n)
            self._pad_left(width - self.mask.shape[1])
            for ours, new in zip(self.cache.layers, cache.layers):
                ours.keys = torch.cat([ours.keys, _left_pad(new.keys, width - n)])  # (B+1, kv_heads, W, hd)
                ours.values = torch.cat([ours.values, _left_pad(new.values, width - n)])
            row_mask = torch.zeros(1, width, dtype=torch.long, device=device)
            row_mask[:, width - n :] = 1
            self.mask = torch.cat([self.mask, row_mask])  # (B+1, W)
        self.row_terms.append(terms)
        self._stack_terms()
        return [*rows, row]

    def leave(self, rows: list, indices: list[int]) -> list:
        keep = [i for i in range(len(rows)) if i not in set(indices)]
        if not keep:
            self.reset()
            return []
        index = torch.tensor(keep, device=self.engine.device)
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        self.mask = self.mask[index]
        self.row_terms = [self.row_terms[i] for i in keep]
        self._stack_terms()
        # Drop the leading columns no remaining row uses.
        unused = int((self.mask.cumsum(dim=1) == 0).sum(dim=1).min())
        if unused:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]
            self.mask = self.mask[:, unused:]
        return [rows[i] for i in keep]

    def forward(self, rows: list) -> torch.Tensor:
        device = self.engine.device
        ids = torch.tensor([[row.pending] for row in rows], device=device)  # (B, 1)
        positions = torch.tensor([[row.length] for row in rows], device=device)  # (B, 1): each row's own count
        mask = torch.cat([self.mask, torch.ones(len(rows), 1, dtype=torch.long, device=device)], dim=1)  # (B, W+1)
        out = self.engine.llm(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=self.cache, use_cache=True,
            logits_to_keep=1, **{TERMS_KWARG: self.terms},
        )
        self.mask = mask
        return out.logits[:, -1]  # (B, V)

    def _pad_left(self, count: int) -> None:
        if count:
            for layer in self.cache.layers:
                layer.keys, layer.values = _left_pad(layer.keys, count), _left_pad(layer.values, count)
            self.mask = torch.nn.functional.pad(self.mask, (count, 0))

    def _stack_terms(self) -> None:
        """Rows without conditioning get zero terms (exactly the plain LLaMA: x + 0 == x)."""
        if all(t is None for t in self.row_terms):
            self.terms = None
            return
        zeros = torch.zeros(1, *self.engine._terms_shape, dtype=self.engine.dtype, device=self.engine.device)
        self.terms = torch.cat([zeros if t is None else t for t in self.row_terms])  # (B, L, D)


def _left_pad(kv: torch.Tensor, count: int) -> torch.Tensor:
    """(B, heads, W, hd) -> (B, heads, count + W, hd) with zeros in front (masked out)."""
    return torch.nn.functional.pad(kv, (0, 0, count, 0)) if count else kv


class _StaticBatch:
    """compile=True: fixed shapes for torch.compile / CUDA graphs. A StaticCache of max_batch
    rows x max_length columns; a row is a slot; `width` is the column the next token goes to."""

    def __init__(self, engine: Engine):
        from transformers import StaticCache

        self.engine = engine
        llm, device, dtype = engine.llm, engine.device, engine.dtype
        rows, columns = engine.max_batch, engine.max_length
        config = llm.config
        self.cache = StaticCache(config=config, max_cache_len=columns)
        # Allocate now (not lazily inside the first compiled call), at fixed addresses.
        shape = (rows, config.num_key_value_heads, 1, config.head_dim)
        for layer in self.cache.layers:
            layer.lazy_initialization(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        self.mask = torch.zeros(rows, columns, dtype=torch.long, device=device)  # (rows, columns)
        self.terms = torch.zeros(rows, *engine._terms_shape, dtype=dtype, device=device)  # (rows, L, D)
        self.ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.width = 0
        if isinstance(engine.compile, str):
            self._decode = torch.compile(self._decode_step, dynamic=False, backend=engine.compile)
        else:
            # CUDA graphs on a GPU ("reduce-overhead"): one launch per step instead of one per kernel.
            mode = "reduce-overhead" if device.type == "cuda" else None
            self._decode = torch.compile(self._decode_step, dynamic=False, mode=mode)

    def _decode_step(self, ids, mask, positions, terms):
        out = self.engine.llm(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=self.cache, use_cache=True,
            logits_to_keep=1, **{TERMS_KWARG: terms},
        )
        return out.logits[:, -1]  # (rows, V)

    def reset(self) -> None:
        self.mask.zero_()
        self.terms.zero_()
        self.width = 0

    def join(self, rows: list, row: _Row, cache, terms: torch.Tensor | None) -> list:
        rows = [*rows, *[None] * (self.engine.max_batch - len(rows))]
        slot = rows.index(None)
        n = row.length
        if n > self.width:
            self._shift(n - self.width)
        start = self.width - n
        for ours, new in zip(self.cache.layers, cache.layers):
            ours.keys[slot, :, start : self.width] = new.keys[0]
            ours.values[slot, :, start : self.width] = new.values[0]
        self.mask[slot] = 0
        self.mask[slot, start : self.width] = 1
        self.terms[slot] = 0 if terms is None else terms[0]
        rows[slot] = row
        return rows

    def leave(self, rows: list, indices: list[int]) -> list:
        rows = list(rows)
        for i in indices:
            rows[i] = None
            self.mask[i] = 0
            self.terms[i] = 0
        if not any(rows):
            self.reset()
        return rows

    def forward(self, rows: list) -> torch.Tensor:
        if self.width >= self.engine.max_length:
            self._compact(rows)
        for i, row in enumerate(rows):
            self.ids[i, 0] = row.pending if row is not None else 0
            self.positions[i, 0] = row.length if row is not None else 0
        self.mask[:, self.width] = 1  # the new token (idle slots attend to it alone: no empty softmax)
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(self.width)  # where StaticLayer.update writes
        logits = self._decode(self.ids, self.mask, self.positions, self.terms).clone()  # CUDA graphs reuse the output
        self.width += 1
        return logits

    def _shift(self, count: int) -> None:
        """Move every row `count` columns right (room for a longer prompt in front)."""
        width = self.width
        for layer in self.cache.layers:
            for kv in (layer.keys, layer.values):
                kv[:, :, count : count + width] = kv[:, :, :width].clone()
                kv[:, :, :count] = 0
        self.mask[:, count : count + width] = self.mask[:, :width].clone()
        self.mask[:, :count] = 0
        self.width += count

    def _compact(self, rows: list) -> None:
        """Drop the leading columns no running row uses (the cache is full)."""
        active = [i for i, row in enumerate(rows) if row is not None]
        unused = int((self.mask[active].cumsum(dim=1) == 0).sum(dim=1).min())
        width = self.width - unused
        for layer in self.cache.layers:
            for kv in (layer.keys, layer.values):
                kv[:, :, :width] = kv[:, :, unused : self.width].clone()
        self.mask[:, :width] = self.mask[:, unused : self.width].clone()
        self.mask[:, width:] = 0
        self.width = width
