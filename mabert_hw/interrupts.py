"""SIGTERM as Ctrl-C, for the commands that keep their finished work when stopped (sweep, power-search),
and the exit status of a stopped command. A module of its own: the CLI imports it while building its
parser, so it must stay light."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt: handled the same way, told apart only by the
    exit status (stopped_status)."""


def signal_status(signum: int) -> int:
    """The status a shell reports for a process that signal `signum` stopped: 128 + its number."""
    return 128 + signum


def stopped_status(stop: KeyboardInterrupt) -> int:
    """The exit status of a command that stopped its work on `stop`: 143 for SIGTERM (Terminated), 130 for
    Ctrl-C, as if the signal had ended the process, so that a caller's script can tell them apart."""
    return signal_status(signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM to this process acts as Ctrl-C while the block runs (raises Terminated, a KeyboardInterrupt),
    so that what a command does to keep its finished work on Ctrl-C happens on SIGTERM too. Only the main
    thread can set a handler; elsewhere SIGTERM acts as before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
