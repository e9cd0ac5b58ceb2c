"""SIGTERM as Ctrl-C (every mabert-hw command and analysis script runs under sigterm_interrupts, so those that
keep their finished work on Ctrl-C keep it on SIGTERM), and the exit status of a stopped command. A module of
its own: the CLI imports it while building its parser, so it must stay light."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt: handled the same way, told apart only by the
    exit status (stopped_status). One that escapes to the interpreter ends it with status 1 and a traceback
    (Python exits as killed by SIGINT only for KeyboardInterrupt itself): the CLI and the scripts catch it."""


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception a stop by signal `signum` raises: Terminated for SIGTERM, KeyboardInterrupt for SIGINT."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def signal_status(signum: int) -> int:
    """The status a shell reports for a process that signal `signum` stopped: 128 + its number."""
    return 128 + signum


def stopped_status(stop: KeyboardInterrupt) -> int:
    """The exit status of a command that stopped its work on `stop`: 143 for SIGTERM (Terminated), 130 for
    Ctrl-C, as if the signal had ended the process, so that a caller's script can tell them apart."""
    return signal_status(signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


def default_sigterm() -> None:
    """SIGTERM back to its default (the process ends): for worker processes forked while sigterm_interrupts
    runs, which must die when their parent terminates them, not raise inside their job loop."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM to this process acts as Ctrl-C while the block runs (raises Terminated, a KeyboardInterrupt),
    so that what a command does to keep its finished work on Ctrl-C happens on SIGTERM too. Only the main
    thread can set a handler; elsewhere SIGTERM acts as before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise interrupt_for(signum)

    previous = signal.getsignal(signal.SIGTERM)
    try:  # set inside the try: a SIGTERM right after it is set still finds the previous handler restored
        signal.signal(signal.SIGTERM, interrupt)
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
