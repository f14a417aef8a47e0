"""Ctrl-C and SIGTERM that never land in the middle of a write to the tracking store.

Python raises KeyboardInterrupt wherever the main thread happens to be. An interrupt inside a
SQLite transaction (MLflow's default store; a run logs its metrics every epoch) leaves the store
locked, and the cleanup that should mark the run KILLED then fails with "database is locked",
leaving the run RUNNING for ever. While `installed`, both signals raise KeyboardInterrupt as
usual, except inside a `deferred` block, where they are held until the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_depth = 0  # how many `deferred` blocks the main thread is inside
_pending: int | None = None  # a signal that arrived inside one
_received: int | None = None  # the signal that raised KeyboardInterrupt, while `installed`


def handle(signum: int, frame: object) -> None:
    """Signal handler: KeyboardInterrupt now, or when the current `deferred` block ends."""
    global _pending, _received
    if _depth:
        _pending = signum
        return
    _received = signum
    raise KeyboardInterrupt(f"signal {signum}")


def check() -> None:
    """Raise KeyboardInterrupt again if a signal already raised one that did not stop the program.

    Python cannot raise out of a weakref callback or a `__del__` (garbage collection runs them at
    any moment): a KeyboardInterrupt raised there is printed and dropped, and training would go on
    as if Ctrl-C had never been pressed. Every path that does receive one stops the command, so
    reaching a check after a signal means it was lost. Training checks before each epoch.
    """
    if _received is not None:
        raise KeyboardInterrupt(f"signal {_received}")


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold an interrupt that arrives during the block (a store write) until it is done."""
    global _depth, _pending, _received
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _pending is not None:
        signum, _pending = _pending, None
        _received = signum
        raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def installed(signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """`handle` for these signals while the block runs (SIGTERM, from `kill`, a job scheduler or
    the end of a session, then ends a run KILLED like Ctrl-C does); the old handlers after."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    global _received
    previous = {signum: signal.signal(signum, handle) for signum in signals}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        _received = None
