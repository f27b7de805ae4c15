"""Typed settings with their defaults and UI ranges, in one place.

The web app builds its sliders from these tables, so a default changes in one spot only.
Defaults follow the released demo (reference section 9/10).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import InputError

# name -> (minimum, maximum, step). The app's sliders and `check()` both read this table.
GENERATION_LIMITS: dict[str, tuple[float, float, float]] = {
    "max_new_tokens": (1, 512, 1),
    "temperature": (0.0, 1.0, 0.05),
    "top_p": (0.0, 1.0, 0.05),
}


@dataclass
class GenerationConfig:
    """How to sample an answer. temperature 0 means greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 0.1
    top_p: float = 0.75
    seed: int | None = None  # None: a fresh random draw per request

    def check(self) -> "GenerationConfig":
        for name, (low, high, _) in GENERATION_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or not low <= value <= high:
                raise InputError(f"generation setting {name}={value!r} is outside [{low}, {high}]")
        if int(self.max_new_tokens) != self.max_new_tokens:
            raise InputError(f"max_new_tokens must be a whole number, got {self.max_new_tokens!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)
