"""SIGTERM as Ctrl-C, for the commands that keep their finished work when stopped (sweep, power-search).
A module of its own: the CLI imports it while building its parser, so it must stay light."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM to this process acts as Ctrl-C while the block runs (raises KeyboardInterrupt), so that what
    a command does to keep its finished work on Ctrl-C happens on SIGTERM too. Only the main thread can
    set a handler; elsewhere SIGTERM acts as before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
