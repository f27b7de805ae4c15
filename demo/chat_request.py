"""One chat request, checked: what any front end (the web app, its `/chat` API, a later
OpenAI-compatible server) hands the pipeline.

Arguments arrive as arbitrary JSON from any client, so every shape and value is checked here,
before work is done, and a bad one raises `InputError` naming the argument and the accepted
values (never an "unexpected server error"). Also here, because every front end needs them:
which modality a file is by its type, the encoding of a mix that drops the inputs that fail on
their own, and typed text stored as a safe temporary file.

    request = ChatRequest.parse(question, files, modalities, weights, history, settings,
                                limits=pipe.limits, generation_defaults=pipe.generation_defaults)
"""

from __future__ import annotations

import math
import numbers
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from .cache import CACHE_LIMITS, RetrievalSettings
from .config import GENERATION_LIMITS, GenerationConfig
from .errors import BadInputError, Cancelled, DemoError, InputError
from .inputs.limits import InputLimits
from .modalities import MODALITIES
from .pipeline import InputItem

MAX_INPUTS = 16  # per request and per session: bounds one encode call
WEIGHT_RANGE = (-1.0, 1.0)  # signed: a negative weight steers away from an input
# Below this a softmax temperature divides logits into inf/NaN; 0 already means greedy decoding.
MIN_SAMPLING_TEMPERATURE = 0.01
MAX_HISTORY_TURNS = 256  # older turns cannot fit LLaMA's context anyway; bounds the request
SETTINGS_KEYS = (*GENERATION_LIMITS, "input", "cache")
CACHE_KEYS = ("enabled", *CACHE_LIMITS)


# ---------------------------------------------------------------------------------------------
# File type -> modality
# ---------------------------------------------------------------------------------------------
def modalities_for(name: str) -> list[str]:
    """Modalities that accept this file name's suffix, in the modality table's order."""
    suffix = Path(name).suffix.lower()
    return [key for key, spec in MODALITIES.items() if suffix in spec.suffixes]


def infer_modality(name: str, override: str | None = None) -> str:
    """The modality of a file: `override` when given (and it accepts the suffix), else the
    first row of the modality table that accepts the suffix (.png is an image, not a depth map;
    .npy a point cloud: pass `override` for the others)."""
    candidates = modalities_for(name)
    if override and override != "auto":
        if override not in MODALITIES:
            raise InputError(f"unknown modality {override!r}; known: auto, {', '.join(MODALITIES)}")
        if override not in candidates:
            raise InputError(f"{safe_name(name)}: a {Path(name).suffix or 'suffix-less'} file cannot be "
                             f"read as {override}; it can be: {', '.join(candidates) or 'nothing (unsupported type)'}")
        return override
    if not candidates:
        known = sorted({s for spec in MODALITIES.values() for s in spec.suffixes})
        raise InputError(f"{safe_name(name)}: unsupported file type; accepted: {' '.join(known)}")
    return candidates[0]


# ---------------------------------------------------------------------------------------------
# Names and messages shown to users: no server paths, no invisible direction controls
# ---------------------------------------------------------------------------------------------
_PATH = re.compile(r"(?:/[^/\s'\"]+)+/")  # the directory part of a server path (POSIX servers)


def safe_name(name: str) -> str:
    """A file name fit to show: base name only, format controls (U+202E etc.) removed."""
    base = re.split(r"[\\/]", str(name))[-1]
    return "".join(ch for ch in base if unicodedata.category(ch) != "Cf") or "(unnamed)"


def plain_message(exc: Exception, items: Sequence[InputItem] = ()) -> str:
    """The library's message with every server path cut to the file name users know."""
    message = str(exc)
    for item in items:
        if isinstance(item.source, (str, os.PathLike)):
            message = message.replace(str(item.source), item.display_name)
    message = _PATH.sub("", message)  # whatever path is left (escaped, in a nested error...)
    return "".join(ch for ch in message if unicodedata.category(ch) != "Cf")


# ---------------------------------------------------------------------------------------------
# The request
# ---------------------------------------------------------------------------------------------
def _number(value: Any, what: str, low: float, high: float, *, whole: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number in [{low:g}, {high:g}], got {value!r}")
    if not low <= value <= high:
        raise InputError(f"{what}={value!r} is outside [{low:g}, {high:g}]")
    if whole and int(value) != value:
        raise InputError(f"{what} must be a whole number, got {value!r}")
    return float(value)


def check_generation(settings: dict, defaults: GenerationConfig) -> GenerationConfig:
    values = {}
    for name, (low, high, _) in GENERATION_LIMITS.items():
        if name in settings:
            values[name] = _number(settings[name], f"settings.{name}", low, high, whole=name == "max_new_tokens")
    if "max_new_tokens" in values:
        values["max_new_tokens"] = int(values["max_new_tokens"])
    temperature = values.get("temperature", defaults.temperature)
    if 0 < temperature < MIN_SAMPLING_TEMPERATURE:
        raise InputError(f"settings.temperature={temperature!r} is too small to sample with: use 0 for "
                         f"greedy decoding or at least {MIN_SAMPLING_TEMPERATURE}")
    return replace(defaults, **values).check()


def check_cache(settings: Any, defaults: RetrievalSettings) -> RetrievalSettings:
    if not isinstance(settings, dict):
        raise InputError(f'settings.cache must be a JSON object with keys {", ".join(CACHE_KEYS)}, e.g. {{"k": 10}}')
    unknown = sorted(set(settings) - set(CACHE_KEYS))
    if unknown:
        raise InputError(f"unknown settings.cache key {unknown[0]!r}; known: {', '.join(CACHE_KEYS)}")
    values: dict[str, Any] = {}
    if "enabled" in settings:
        if not isinstance(settings["enabled"], bool):
            raise InputError(f"settings.cache.enabled must be true or false, got {settings['enabled']!r}")
        values["enabled"] = settings["enabled"]
    for name, (low, high, _) in CACHE_LIMITS.items():
        if name in settings:
            values[name] = _number(settings[name], f"settings.cache.{name}", low, high, whole=name == "k")
    if "k" in values:
        values["k"] = int(values["k"])
    return replace(defaults, **values).check()


def check_question(question: Any, input_text: str | None, limits: InputLimits) -> str:
    """The question, stripped; refused when empty or, with the input text, over the limit."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty: type a question or instruction")
    own = len(question.strip()) + len(input_text or "")
    if own > limits.prompt_max_chars:
        raise InputError(f"the question is {own:,} characters long, over the limit of {limits.prompt_max_chars:,}; "
                         f"shorten it by at least {own - limits.prompt_max_chars:,} characters")
    return question.strip()


def check_settings(settings: Any, known: Sequence[str], example: str) -> dict:
    """A settings object as an endpoint receives it: None -> {}; anything but a JSON object, or a
    key not in `known`, is an InputError naming the known keys."""
    settings = {} if settings is None else settings
    if not isinstance(settings, dict):
        raise InputError(f"settings must be a JSON object, e.g. {example}")
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise InputError(f"unknown settings key {unknown[0]!r}; known: {', '.join(known)}")
    return settings


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat request: the question, the weighted inputs, earlier turns and settings."""

    question: str
    inputs: list[InputItem] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)  # (question, answer), oldest first
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    cache: RetrievalSettings | None = None  # None: the pipeline's default
    input_text: str | None = None  # the optional "input" of the second prompt template

    @classmethod
    def parse(cls, question: Any, files: Any = None, modalities: Any = None, weights: Any = None,
              history: Any = None, settings: Any = None, *, limits: InputLimits | None = None,
              generation_defaults: GenerationConfig | None = None,
              cache_defaults: RetrievalSettings | None = None) -> "ChatRequest":
        """Check JSON-shaped arguments (as `/chat` receives them); raise InputError naming the first
        bad one. files: paths; modalities: one name per file, one name for all, or None/"auto"
        (from the file type); weights: one number per file in [-1, 1], or None (all 1)."""
        limits = limits or InputLimits()
        settings = check_settings(settings, SETTINGS_KEYS, '{"max_new_tokens": 64}')
        input_text = settings.get("input") or None
        if input_text is not None and not isinstance(input_text, str):
            raise InputError("settings.input must be a string")
        question = check_question(question, input_text, limits)

        files = [] if files is None else files
        if not isinstance(files, list) or not all(isinstance(f, (str, os.PathLike)) for f in files):
            raise InputError("files must be a list of files")
        if len(files) > MAX_INPUTS:
            raise InputError(f"at most {MAX_INPUTS} files per request, got {len(files)}")
        if modalities is None or isinstance(modalities, str):
            modalities = [modalities] * len(files)
        if not isinstance(modalities, list):
            raise InputError("modalities must be a list of names (one per file) or one name for all")
        if weights is None:
            weights = [1.0] * len(files)
        if not isinstance(weights, list):
            raise InputError(f"weights must be a list with one number per file (e.g. [1.0, 0.5]), got {weights!r}")
        if not len(modalities) == len(weights) == len(files):
            raise InputError(f"got {len(files)} files, {len(modalities)} modalities and {len(weights)} weights: "
                             "give one modality and one weight per file")
        inputs = []
        for path, modality, weight in zip(files, modalities, weights):
            name = safe_name(str(path))
            if modality is not None and not isinstance(modality, str):
                raise InputError(f"{name}: modality must be a name, got {modality!r}")
            if modality is not None and modality != "auto" and modality not in MODALITIES:
                raise InputError(f"unknown modality {modality!r}; known: auto, {', '.join(MODALITIES)}")
            weight = _number(weight, f"{name}: weight", *WEIGHT_RANGE)
            inputs.append(InputItem(infer_modality(str(path), modality), str(path), weight, name))

        history = [] if history is None else history
        if not isinstance(history, list) or not all(
                isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
                for turn in history):
            raise InputError('history must be a list of [question, answer] pairs of strings, e.g. [["Hi", "Hello!"]]')
        if len(history) > MAX_HISTORY_TURNS:
            raise InputError(f"history has {len(history)} turns; at most {MAX_HISTORY_TURNS} are accepted")

        generation = check_generation(settings, generation_defaults or GenerationConfig())
        cache = check_cache(settings["cache"], cache_defaults or RetrievalSettings()) if "cache" in settings else None
        return cls(question, inputs, [tuple(turn) for turn in history], generation, cache, input_text)


# ---------------------------------------------------------------------------------------------
# Encoding a mix that may hold broken files; typed text as a file
# ---------------------------------------------------------------------------------------------
def encode_dropping_bad_inputs(pipe, items: Sequence[InputItem], cache: RetrievalSettings | None = None, *, cancel=None):
    """Encode the mix; an input the library names as bad (`BadInputError.index`) is dropped with
    its message and the rest encoded again, so a broken upload never poisons later questions.

    Returns (Conditioning or None, kept items, messages). An error no single input explains
    (e.g. weights that cancel out) keeps the mix and returns its message. `Cancelled` propagates.
    """
    kept, messages = list(items), []
    while True:
        try:
            return pipe.encode(kept, cache, cancel=cancel), kept, messages
        except BadInputError as bad:
            item = kept.pop(bad.index)
            message = plain_message(bad, [item])
            messages.append(message if item.display_name in message else f"{item.display_name}: {message}")
            if not kept:
                return None, kept, messages
        except Cancelled:
            raise
        except DemoError as whole_error:
            return None, kept, messages + [plain_message(whole_error, kept)]


def write_text_input(text: str, limits: InputLimits, directory: str | os.PathLike | None = None) -> Path:
    """Typed text -> a new .txt file (unique name, created exclusively: never follows a symlink
    or overwrites a file). The caller deletes it when the input is removed."""
    data = text.strip().encode("utf-8")
    if not data:
        raise InputError("the text is empty: type some text to add")
    if len(data) > limits.text_max_bytes:
        raise InputError(f"the text is {len(data):,} bytes, over the limit of {limits.text_max_bytes:,}")
    handle, path = tempfile.mkstemp(prefix="text-", suffix=".txt", dir=directory)  # O_CREAT | O_EXCL
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    return Path(path)
