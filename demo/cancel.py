"""Cooperative cancellation: one token per request, checked between steps of long work.

Python threads cannot be interrupted from outside, so long work (decoding a file, running an
encoder tower, each decoding step) calls `check()` between steps. Whoever owns the request (the
app when a client disconnects or presses Stop, the engine when a row is dropped) calls `cancel()`.
The token is passed explicitly to each computation; there is no global or per-thread state.

    token = CancelToken()
    pipe.encode(inputs, cancel=token)      # raises Cancelled at its next check once cancelled
"""

from __future__ import annotations

import threading

from .errors import Cancelled


class CancelToken:
    """A one-way flag: once cancelled it stays cancelled. Thread-safe."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise `Cancelled` if the request was cancelled; cheap enough to call per step."""
        if self._event.is_set():
            raise Cancelled("the request was cancelled")


def check(token: CancelToken | None) -> None:
    """`token.check()` that accepts None (not cancellable), for optional parameters."""
    if token is not None:
        token.check()
