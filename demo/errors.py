"""Exceptions the library raises. Each message says what went wrong and what to do."""


class DemoError(Exception):
    """Base class for every error this library raises on purpose."""


class InputError(DemoError, ValueError):
    """A user's input (file, array, value) cannot be used. The message names the input."""


class WeightsError(DemoError, RuntimeError):
    """Weight files are missing, partial, or do not match the code. The message says the fix."""


class PromptTooLongError(InputError):
    """The prompt does not fit the model's context window even after dropping old turns."""


class Cancelled(DemoError):
    """The request was cancelled (Stop pressed, tab closed, client gone) before it finished."""


class BusyError(DemoError, RuntimeError):
    """The server is at capacity (the engine's waiting queue is full); retry later (HTTP 503)."""
