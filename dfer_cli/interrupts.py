"""Ctrl-C and SIGTERM during long runs: one guard that turns them into KeyboardInterrupt in the
main thread, notes which signal came, and holds them back while a file and its record are
written (`shielded`), so that an interrupted run leaves only whole files."""
from __future__ import annotations

import contextlib
import signal
import threading

_DEFAULT = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


class InterruptGuard:
    """While active (a ``with`` block in the main thread), each of `signals` raises
    KeyboardInterrupt and is noted in `seen` / `signum` (so that an interrupt swallowed on its
    way, inside a C library's callback, is not taken for the end of the input); inside
    `shielded()` it is held back and raised when that block ends. With `only_over_default`
    the guard takes a signal only from Python's default handler (a signal the caller ignores
    stays ignored). Outside the main thread the guard does nothing."""

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM), only_over_default: bool = False):
        self.signals = tuple(signals)
        self.only_over_default = only_over_default
        self.seen, self.signum = False, None
        self.inside = self.pending = False
        self.previous: dict = {}

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                current = signal.getsignal(sig)
                if not self.only_over_default or current is _DEFAULT.get(sig):
                    self.previous[sig] = current
                    signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
        return False

    def _handle(self, signum, frame):
        self.seen, self.signum = True, signum
        if self.inside:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def shielded(self):
        """Hold the guarded signals back for the block; one that came is raised at its end."""
        self.inside = True
        try:
            yield
        finally:
            self.inside = False
            if self.pending:
                self.pending = False
                raise KeyboardInterrupt
