"""Exceptions the library raises. Each message says what went wrong and what to do."""


class DemoError(Exception):
    """Base class for every error this library raises on purpose."""


class InputError(DemoError, ValueError):
    """A user's input (file, array, value) cannot be used. The message names the input."""


class BadInputError(InputError):
    """One input of a request cannot be used. `index` is its position in the sequence given to
    `ImageBindLLMPipeline.encode`, `name` its display name (never a server path): what a caller
    needs to drop that input and tell the user why."""

    def __init__(self, message: str, index: int, name: str) -> None:
        super().__init__(message)
        self.index, self.name = index, name

    def __reduce__(self):  # picklable across processes despite the extra arguments
        return type(self), (str(self), self.index, self.name)


class WeightsError(DemoError, RuntimeError):
    """Weight files are missing, partial, or do not match the code. The message says the fix."""


class PromptTooLongError(InputError):
    """The prompt does not fit the model's context window even after dropping old turns."""


class Cancelled(DemoError):
    """The request was cancelled (Stop pressed, tab closed, client gone) before it finished."""


class BusyError(DemoError, RuntimeError):
    """The server is at capacity (the engine's waiting queue is full); retry later (HTTP 503)."""
