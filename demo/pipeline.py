"""The one inference object: inputs -> ImageBind -> mix -> visual cache -> bind -> gated LLaMA.

    pipe = ImageBindLLMPipeline.from_pretrained("tiny")            # or a converted folder
    cond = pipe.encode([InputItem("image", "cat.jpg"), InputItem("audio", "meow.wav", 0.5)])
    for delta in pipe.stream("What do you see and hear?", cond):
        print(delta, end="")

`__init__` only wires ready components; `from_pretrained` does all loading.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from .arithmetic import mix_embeddings, normalised_weights
from .cancel import CancelToken, check
from .config import GenerationConfig
from .errors import BadInputError, InputError, PromptTooLongError
from .engine import Engine, Request
from .generation import GenerationState
from .modalities import get_modality
from .presets import POCKET_FOLDER, PRESETS, default_home, ensure_tiny  # noqa: F401  (re-exported: older imports)
from .presets import resolve as resolve_preset
from .prompt import STOP_STRINGS, format_prompt

if TYPE_CHECKING:
    from PIL.Image import Image

    from .cache import RetrievalResult, RetrievalSettings, VisualCache
    from .encoders.encoder import MultimodalEncoder
    from .imagine import ImageGenerator, ImageSettings
    from .inputs.common import Source
    from .inputs.limits import InputLimits
    from .model import ImageBindLLM

logger = logging.getLogger(__name__)

# One input of a mix as reported back: (modality, display name, normalised weight).
MixEntry = tuple[str, str, float]


@dataclass
class InputItem:
    """One user input: a file (or in-memory object) of a modality, with its mixing weight.

    Args:
        modality: a name of `demo.modalities.MODALITIES` ("image", "audio", ...).
        source: a path, or an in-memory object where the modality's loader takes one (PIL image,
            array, tensor).
        weight: its mixing weight in [-1, 1]; negative steers away, 0 leaves it out.
        name: shown in the mix summary and in errors; defaults to the file name.
    """

    modality: str
    source: Source
    weight: float = 1.0
    name: str | None = None

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if isinstance(self.source, (str, os.PathLike)):
            return Path(self.source).name
        return f"<{type(self.source).__name__}>"


@dataclass
class Conditioning:
    """What the LLM is conditioned on for one request (`ImageBindLLMPipeline.encode`).

    Args:
        embedding: (E,) the final ImageBind-space vector, after the visual cache.
        terms: (1, L, D) the per-layer injected terms, computed once per request.
        mix: each input kept, with its normalised weight.
        neighbours: what the visual cache recalled; None when it was not used.
        notes: things the user should know (cache off, no inputs, ...).
    """

    embedding: torch.Tensor
    terms: torch.Tensor
    mix: list[MixEntry] = field(default_factory=list)
    neighbours: RetrievalResult | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ImagineOutput:
    """One picture made from the inputs (`ImageBindLLMPipeline.imagine`).

    Args:
        image: the picture.
        embedding: (E,) the vector it was generated from (reference section 13; NOT unit-norm).
        mix: each input used, with its normalised weight, as in `Conditioning`.
        settings: the settings used, with the concrete seed (passing them again replays the picture).
        neighbours: what the visual cache recalled; None when it was not used.
        notes: things the user should know.
        settings_used: the `settings` fields the image model read (the others had no effect); None: all.
    """

    image: Image
    embedding: torch.Tensor
    mix: list[MixEntry]
    settings: ImageSettings
    neighbours: RetrievalResult | None = None
    notes: list[str] = field(default_factory=list)
    settings_used: tuple[str, ...] | None = None  # None: every field


@dataclass
class PipelineOutput:
    """A whole answer (`ImageBindLLMPipeline.__call__`).

    Args:
        text: the answer, cut before the template's stop strings.
        conditioning: what it was conditioned on.
        finish_reason: "eos", "stop_string", "length" or "cancelled".
        dropped_turns: the oldest history turns left out so that the prompt fits the context.
    """

    text: str
    conditioning: Conditioning
    finish_reason: str
    dropped_turns: int = 0


class ImageBindLLMPipeline:
    """Inputs -> ImageBind -> mix -> visual cache -> bind network -> gated LLaMA, in one object.

    `__init__` wires ready parts: the model (LLM + bind network + injection), the encoder, the
    visual cache (None: off), the input limits, the decoding engine and an optional image
    generator. `from_pretrained` loads them from a converted folder or a preset (demo/presets.py).
    """

    # The engine decodes in its own thread, batching concurrent requests. A host where only the
    # calling function may hold the GPU (ZeroGPU: demo/serve/zerogpu.py) turns this off.
    engine_in_background: bool = True

    def __init__(
        self, model: ImageBindLLM, encoder: MultimodalEncoder, cache: VisualCache | None = None, *,
        limits: InputLimits | None = None, placeholder: bool = False, notice: str | None = None,
        engine: Engine | None = None, image_generator: ImageGenerator | None = None,
    ):
        from .cache import RetrievalSettings
        from .inputs.limits import InputLimits

        self.model = model
        # Decodes every stream: concurrent requests share forward passes (demo/engine.py).
        self.engine = engine if engine is not None else Engine(model.llm, model.tokenizer)
        self.encoder = encoder
        self.cache = cache  # the visual cache; None: off
        self.limits = limits or InputLimits()
        self.is_placeholder = placeholder  # random weights: answers are meaningless
        self.notice = notice  # what the model is, for a banner (the folder's imagebind_llm.json "notice")
        self.generation_defaults = GenerationConfig()
        # Per-request visual-cache settings when a request brings none.
        self.retrieval_defaults = RetrievalSettings(enabled=cache is not None)
        self._blank: torch.Tensor | None = None
        self._blank_lock = threading.Lock()
        # Encodings running at once (limits.max_running_encodes, read here): see `_encode_slot`.
        self._encode_slots = threading.BoundedSemaphore(self.limits.max_running_encodes)
        # Image output (optional): a demo.imagine.ImageGenerator taking this encoder's vectors.
        if image_generator is not None and image_generator.embed_dim != self.embed_dim:
            from .errors import WeightsError

            raise WeightsError(
                f"the image generator takes {image_generator.embed_dim}-d embeddings but ImageBind gives {self.embed_dim}-d: "
                "use the Stable unCLIP checkpoint made for OpenCLIP ViT-H (stabilityai/stable-diffusion-2-1-unclip)"
            )
        self.image_generator = image_generator

    @property
    def cache_defaults(self) -> RetrievalSettings:
        """The older name of `retrieval_defaults`."""
        return self.retrieval_defaults

    # ------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "tiny",
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        quantization: str | None = None,
        cache_path: str | os.PathLike | None = None,
        imagebind_path: str | os.PathLike | None = None,
        home: str | os.PathLike | None = None,
        concurrency: int = 8,
        compile: bool = False,
        unclip_path: str | os.PathLike | None = None,
    ) -> "ImageBindLLMPipeline":
        """Load a converted folder (see `ibllm convert --help`) or a preset (`demo.presets`: "tiny",
        "pocket", "release").

        quantization: None, "8bit" or "4bit" (bitsandbytes, LLaMA only).
        cache_path: a faiss index for the visual cache; None leaves the cache off.
        imagebind_path: ImageBind weights, when not recorded in the folder's imagebind_llm.json.
        home: where the tiny preset is written (default $IBLLM_HOME or ~/.cache/imagebind-llm).
        concurrency: requests decoded together in one batch (the engine's rows).
        compile: the fast path (static KV cache + torch.compile; CUDA graphs on a GPU). Off by
            default: on a CPU it compiles for minutes and is not faster (README, Engine).
        unclip_path: a local Stable unCLIP folder (`ibllm download unclip`) for
            `imagine`; None uses the folder's imagebind_llm.json "unclip" entry, if any, else its
            "image_decoder" entry (the pocket model's decoder), else image output stays off.
        On a Hugging Face ZeroGPU Space load `demo.serve.zerogpu.pipeline_class()` instead (its GPU
        work runs in @spaces.GPU calls); the app and `python -m demo.serve` do.
        """
        from .encoders.encoder import MultimodalEncoder
        from .model import ImageBindLLM, read_folder_config, resolve_device

        folder = resolve_preset(name_or_path, home)
        meta = read_folder_config(folder)
        model = ImageBindLLM.from_pretrained(folder, device=device, dtype=dtype, quantization=quantization)
        imagebind = Path(imagebind_path) if imagebind_path else _imagebind_path(folder, meta)
        encoder_dtype = None if quantization is None else torch.float16 if resolve_device(device).type == "cuda" else None
        encoder = MultimodalEncoder.from_pretrained(imagebind, device=resolve_device(device), dtype=encoder_dtype)
        cache = None
        if cache_path is not None:
            from .cache import VisualCache

            cache = VisualCache.from_index(cache_path, dim=encoder.config.out_dim)
        engine = Engine(model.llm, model.tokenizer, max_batch=concurrency, compile=compile, background=cls.engine_in_background)
        image_generator = None
        if unclip_path is not None or meta.get("unclip"):
            from .imagine import UnCLIPGenerator

            unclip = Path(unclip_path) if unclip_path is not None else _recorded_path(folder, meta["unclip"])
            image_generator = UnCLIPGenerator.from_pretrained(unclip, device=resolve_device(device))
        elif meta.get("image_decoder"):  # the pocket world's own small decoder (demo/imagine/pocket.py)
            from .imagine.pocket import PocketDecoder

            image_generator = PocketDecoder.from_pretrained(_recorded_path(folder, meta["image_decoder"]))
        return cls(
            model, encoder, cache, placeholder=bool(meta.get("placeholder")), notice=meta.get("notice"), engine=engine,
            image_generator=image_generator,
        )

    # ------------------------------------------------------------------------------------------
    # 1. Inputs -> conditioning
    # ------------------------------------------------------------------------------------------
    def embed(self, item: InputItem, *, cancel: CancelToken | None = None) -> torch.Tensor:
        """One input -> its L2-normalised ImageBind embedding, (E,) float32 on the CPU.

        Waits for an encoding slot (see `encode`); raises `Cancelled` once `cancel` is cancelled."""
        with self._encode_slot(cancel):
            return self._embed(item, cancel)

    def _embed(self, item: InputItem, cancel: CancelToken | None) -> torch.Tensor:
        from .inputs.registry import load_input

        modality = _modality(item.modality)
        sample = load_input(modality, item.source, self.limits, cancel=cancel)
        if not get_modality(modality).tower:  # an ImageBind embedding already
            vector = sample
            if vector.shape[-1] != self.embed_dim:
                raise InputError(f"{item.display_name}: embedding has {vector.shape[-1]} values, this model uses {self.embed_dim}")
        else:
            vector = self.encoder.encode(modality, sample, cancel=cancel)
        return F.normalize(vector.float().reshape(-1), dim=0).cpu()

    @contextmanager
    def _encode_slot(self, cancel: CancelToken | None) -> Iterator[None]:
        """Hold one of `limits.max_running_encodes` slots while encoding.

        The slot is released when the work really stops (the `with` block ends, normally or by
        `Cancelled` at the next check), not when the client goes away: a web server's queue frees
        its place at once when a request is cancelled, but the thread still decodes and encodes,
        and a new request would run beside it. A request waiting for a slot stops waiting once
        cancelled."""
        while not self._encode_slots.acquire(timeout=0.05):
            check(cancel)
        try:
            yield
        finally:
            self._encode_slots.release()

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.config.out_dim)

    def encode(
        self, inputs: Sequence[InputItem] = (), cache: RetrievalSettings | None = None, *, cancel: CancelToken | None = None
    ) -> Conditioning:
        """Weighted inputs -> Conditioning. No inputs: the blank image, as in training. `cache`:
        this request's visual-cache settings (None: `retrieval_defaults`).

        An input that cannot be used raises `BadInputError` (an InputError) whose `index` is its
        position in `inputs` and `name` its display name, so a caller can drop it and retry.
        `cancel` is checked between inputs and inside each input's loading and encoding."""

        cache = (cache or self.retrieval_defaults).check()
        notes: list[str] = []
        items = [(index, item) for index, item in enumerate(inputs) if item.weight != 0]
        if inputs and not items:
            raise InputError("all input weights are zero: give at least one input a non-zero weight")
        if not items:
            # Training fed an all-zero (after normalisation) image to text-only samples.
            embedding = self._blank_embedding()
            mix: list[MixEntry] = []
            notes.append("no inputs: answering from text alone (blank-image conditioning)")
            neighbours = None
        else:
            weights = [item.weight for _, item in items]
            shares = normalised_weights(weights)
            embeddings = []
            with self._encode_slot(cancel):
                for index, item in items:
                    check(cancel)
                    try:
                        embeddings.append(self._embed(item, cancel))
                    except InputError as exc:
                        raise BadInputError(_named(str(exc), item), index, item.display_name) from None
            embedding = mix_embeddings(embeddings, weights)
            mix = [(item.modality, item.display_name, share) for (_, item), share in zip(items, shares)]
            neighbours = None
            if (k := self._cache_k(cache, notes)) is not None:
                neighbours = self.cache.retrieve(embedding, k=k, temperature=cache.temperature, weight=cache.weight)
                embedding = neighbours.embedding
        check(cancel)
        terms = self.model.conditioning_terms(embedding[None])  # (1, L, D), once per request
        return Conditioning(embedding, terms, mix, neighbours, notes)

    def _cache_k(self, cache: RetrievalSettings, notes: list[str]) -> int | None:
        """The k to search the loaded cache with, or None when the cache is not used; adds what
        the user should know to `notes`."""
        if not cache.enabled:
            return None
        if self.cache is None:
            notes.append("visual cache is off: no cache index is loaded (see README, Visual cache)")
            return None
        k = min(int(cache.k), self.cache.index.ntotal)  # a small home-made cache has fewer than k
        if k < cache.k:
            notes.append(f"visual cache has {k} entries: using k={k} instead of {cache.k}")
        return k

    def _blank_embedding(self) -> torch.Tensor:
        with self._blank_lock:
            if self._blank is None:
                blank = torch.zeros(3, 224, 224)  # a normalised all-zero image
                self._blank = F.normalize(self.encoder.encode("image", blank).float().reshape(-1), dim=0).cpu()
            return self._blank

    # ------------------------------------------------------------------------------------------
    # 2. Conditioning + question -> streamed answer
    # ------------------------------------------------------------------------------------------
    def prompt_ids(
        self, question: str, history: Sequence[tuple[str, str]] = (), input_text: str | None = None, max_new_tokens: int = 0
    ) -> tuple[list[int], int]:
        """Token ids (BOS first) of the prompt, dropping the oldest turns until it fits the context
        with room for `max_new_tokens`. Returns (ids, number of turns dropped).

        Linear in the history's size: turns beyond `limits.prompt_max_turns`, or beyond the
        character budget counted with each turn's template, are dropped without being read, and
        the number of turns that fits the context is found by bisection (at most ~9 tokenisations
        of at most `prompt_max_chars` characters)."""
        tokenizer = self.model.tokenizer
        context = self.model.context_length
        history = list(history)
        limit = self.limits.prompt_max_chars
        own = len(question) + len(input_text or "")
        if own > limit:
            what = "the question and input are" if input_text else "the question is"
            raise PromptTooLongError(
                f"{what} {own} characters long, over the limit of {limit}. Shorten it by at least {own - limit} characters."
            )
        # Character budget with the template: each kept turn costs its text plus TURN_TEMPLATE_CHARS.
        first = max(len(history) - self.limits.prompt_max_turns, 0)
        budget = limit - own
        kept = len(history)
        while kept > first and (budget := budget - sum(map(len, history[kept - 1])) - TURN_TEMPLATE_CHARS) >= 0:
            kept -= 1
        first = kept

        def ids_without(dropped: int) -> list[int]:
            text = format_prompt(question, input_text, history[dropped:])
            return [self.model.backbone.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)

        # The fewest dropped turns whose prompt fits: more turns never take fewer tokens.
        low, high = first, len(history)
        best = ids_without(high)
        if len(best) + max_new_tokens <= context:
            while low < high:
                middle = (low + high) // 2
                ids = ids_without(middle)
                if len(ids) + max_new_tokens <= context:
                    high, best = middle, ids
                else:
                    low = middle + 1
            return best, high
        if len(best) < context:  # fits, but leaves fewer new tokens than asked: generation is shortened
            return best, len(history)
        raise PromptTooLongError(
            f"the question is {len(best)} tokens long with the template; the model's context is {context} tokens. "
            f"Shorten it by at least {len(best) - context + 1} tokens."
        )

    def stream(
        self,
        question: str,
        conditioning: Conditioning | None = None,
        *,
        history: Sequence[tuple[str, str]] = (),
        input_text: str | None = None,
        generation: GenerationConfig | None = None,
        state: GenerationState | None = None,
        cancel: CancelToken | None = None,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        """Yield the answer as text deltas, cut before the template's stop strings and the extra
        `stop` strings. Breaking out of the loop (or closing the generator) stops generation and
        frees the batch row; `cancel.cancel()` does too, and the iterator
        then raises `demo.errors.Cancelled`. Concurrent calls share the engine's forward passes."""
        ids, _, generation = self._prompt(question, history, input_text, generation)
        conditioning = conditioning if conditioning is not None else self.encode()
        yield from self._generate(ids, conditioning, generation, state, cancel, stop)

    def _prompt(
        self, question: str, history: Sequence[tuple[str, str]], input_text: str | None, generation: GenerationConfig | None
    ) -> tuple[list[int], int, GenerationConfig]:
        """(prompt ids, turns dropped, the checked generation settings with max_new_tokens cut to
        the room left in the context)."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty: type a question or instruction")
        generation = (generation or self.generation_defaults).check()
        ids, dropped = self.prompt_ids(question, history, input_text, int(generation.max_new_tokens))
        if dropped:
            logger.info("dropped %d oldest turns to fit the context", dropped)
        room = self.model.context_length - len(ids)
        return ids, dropped, GenerationConfig(**{**generation.to_dict(), "max_new_tokens": min(int(generation.max_new_tokens), room)})

    def _generate(
        self, ids: list[int], conditioning: Conditioning, generation: GenerationConfig, state: GenerationState | None,
        cancel: CancelToken | None, stop: Sequence[str],
    ) -> Iterator[str]:
        yield from self._decode(Request(ids, conditioning.terms, generation, STOP_STRINGS + tuple(stop), cancel), state)

    def _decode(self, request: Request, state: GenerationState | None) -> Iterator[str]:
        """The engine's part of `stream` (on ZeroGPU it runs inside `@spaces.GPU`: demo/serve/zerogpu.py)."""
        stream = self.engine.submit(request, state)
        try:
            yield from stream
        finally:
            stream.cancel()  # a no-op once finished; frees the row when the consumer stopped early

    def __call__(
        self,
        question: str,
        inputs: Sequence[InputItem] = (),
        *,
        history: Sequence[tuple[str, str]] = (),
        input_text: str | None = None,
        generation: GenerationConfig | None = None,
        cache: RetrievalSettings | None = None,
        cancel: CancelToken | None = None,
    ) -> PipelineOutput:
        """Encode, then generate the whole answer (`cache`: as in `encode`)."""
        ids, dropped, generation = self._prompt(question, history, input_text, generation)  # bad questions fail before encoding
        conditioning = self.encode(inputs, cache, cancel=cancel)
        state = GenerationState()
        text = "".join(self._generate(ids, conditioning, generation, state, cancel, ()))
        return PipelineOutput(text, conditioning, state.finish_reason, dropped)

    # ------------------------------------------------------------------------------------------
    # 3. Inputs -> picture (optional image output, reference section 13)
    # ------------------------------------------------------------------------------------------
    def image_embedding(
        self, inputs: Sequence[InputItem], cache: RetrievalSettings | None = None, *, cancel: CancelToken | None = None
    ) -> tuple[torch.Tensor, list[MixEntry], RetrievalResult | None, list[str]]:
        """Weighted inputs -> (the (E,) vector images are generated from, mix, cache result, notes).

        Section 13, not the LLM's mix: each input's PRE-normalisation embedding (point clouds / 5),
        signed weights divided by (sum |w| + 1e-6) and summed, then with the cache on: the unit
        direction blended as in section 8 and the mix's norm put back (demo/imagine/embedding.py).
        Errors name the input as `encode`'s do."""
        from .imagine.embedding import blend_keeping_norm, mix_unnormalised, scaled_embedding

        cache = (cache or self.retrieval_defaults).check()
        items = [(index, item) for index, item in enumerate(inputs) if item.weight != 0]
        if not items:
            raise InputError("an image needs at least one input with a non-zero weight (an image, a sound, a point cloud...)")
        weights = [item.weight for _, item in items]
        terms = []
        with self._encode_slot(cancel):
            for index, item in items:
                check(cancel)
                try:
                    terms.append(scaled_embedding(_modality(item.modality), self._embed_unnormalised(item, cancel)))
                except InputError as exc:
                    raise BadInputError(_named(str(exc), item), index, item.display_name) from None
        embedding = mix_unnormalised(terms, weights)
        mix = [(item.modality, item.display_name, share) for (_, item), share in zip(items, normalised_weights(weights))]
        notes: list[str] = []
        neighbours = None
        if (k := self._cache_k(cache, notes)) is not None:
            embedding, neighbours = blend_keeping_norm(embedding, self.cache, k=k, temperature=cache.temperature, weight=cache.weight)
        return embedding, mix, neighbours, notes

    def _embed_unnormalised(self, item: InputItem, cancel: CancelToken | None) -> torch.Tensor:
        """One input -> its pre-normalisation embedding, (E,) float32 CPU. A saved embedding
        (a modality without a tower) is used as given: its pre-normalisation form is not known."""
        from .inputs.registry import load_input

        modality = _modality(item.modality)
        sample = load_input(modality, item.source, self.limits, cancel=cancel)
        if not get_modality(modality).tower:  # an ImageBind embedding already
            if sample.shape[-1] != self.embed_dim:
                raise InputError(f"{item.display_name}: embedding has {sample.shape[-1]} values, this model uses {self.embed_dim}")
            return sample.float().reshape(-1).cpu()
        return self.encoder.encode_unnormalised(modality, sample, cancel=cancel).reshape(-1)

    def imagine(
        self,
        inputs: Sequence[InputItem],
        *,
        prompt: str = "",
        negative_prompt: str | None = None,
        steps: int = 20,
        guidance: float = 10.0,
        noise_level: int = 0,
        seed: int | None = None,
        size: int | tuple[int, int] | None = None,
        cache: RetrievalSettings | None = None,
        progress: Callable[[int, int], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> ImagineOutput:
        """A picture of what the model "sees" in the weighted inputs (the released demo's
        Output: Image). Defaults are the release's (20 steps, guidance 10, noise level 0); `seed`
        None draws one, returned in `output.settings.seed` (the same seed gives the same image).
        `progress(k, n)` is called after each of the n denoising steps; `cancel` stops at the next
        input or step with `Cancelled`. Needs an image generator (`unclip_path=`), else
        raises WeightsError saying how to get one."""
        from .imagine import ImageSettings

        if self.image_generator is None:
            from .errors import WeightsError

            raise WeightsError(
                "image output needs the Stable unCLIP weights (about 3.9 GB in fp16): run "
                "`ibllm download unclip`, then load with "
                "`ImageBindLLMPipeline.from_pretrained(folder, unclip_path=\"weights/downloads/stable-diffusion-2-1-unclip\")` "
                "or add \"unclip\": \"<that folder>\" to the folder's imagebind_llm.json"
            )
        settings = ImageSettings(prompt, negative_prompt, steps, guidance, noise_level, seed, size)
        settings = settings.check(self.image_generator.max_noise_level).with_seed()  # bad settings fail before any encoding
        embedding, mix, neighbours, notes = self.image_embedding(inputs, cache, cancel=cancel)
        image = self.image_generator.generate(embedding, settings, progress=progress, cancel=cancel)
        return ImagineOutput(image, embedding, mix, settings, neighbours, notes, tuple(self.image_generator.settings_used))

    def save_embeddings(self, inputs: Sequence[InputItem], path: str | os.PathLike) -> Path:
        """Embed each input and save {name: (E,) tensor} as safetensors, for offline arithmetic."""
        from safetensors.torch import save_file

        tensors = {f"{i}:{item.modality}:{item.display_name}": self.embed(item) for i, item in enumerate(inputs)}
        save_file(tensors, str(path))
        return Path(path)


# Characters one earlier turn adds to the prompt besides its question and answer.
TURN_TEMPLATE_CHARS = len(format_prompt("", None, [("", "")])) - len(format_prompt("", None, []))


def _named(message: str, item: InputItem) -> str:
    """`message` (a loader's, which names the source by its file name) naming the input by its
    display name, the name the user knows."""
    source_name = Path(item.source).name if isinstance(item.source, (str, os.PathLike)) else None
    if source_name and message.startswith(source_name + ":"):
        return item.display_name + message[len(source_name):]
    return message if message.startswith(item.display_name) else f"{item.display_name}: {message}"


def _modality(name: str) -> str:
    try:
        return get_modality(name).name
    except KeyError as exc:
        raise InputError(str(exc.args[0])) from None


def _recorded_path(folder: Path, recorded: str) -> Path:
    """A path written in imagebind_llm.json: absolute, or relative to the folder."""
    path = Path(recorded)
    return path if path.is_absolute() else folder / path


def _imagebind_path(folder: Path, meta: dict) -> Path:
    recorded = meta.get("imagebind")
    if not recorded:
        from .errors import WeightsError

        raise WeightsError(
            f"{folder}/imagebind_llm.json records no ImageBind weights: pass imagebind_path= (or --imagebind) "
            "pointing to imagebind_w3D.pth or imagebind_huge.pth"
        )
    return _recorded_path(folder, recorded)
